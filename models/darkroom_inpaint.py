"""darkroom-inpaint: fills the holes of an image given a mask, trained by darkroom (L1, PSNR).

Two stages. First a classical fill: :func:`pushpull_fill` averages the known pixels down an
image pyramid until every hole is covered, then works back up, relaxing the holes at every
level towards the mean of their neighbours (a few Jacobi sweeps of Laplace's equation, as in
a multigrid solver), so each hole gets the smooth membrane surface spanned by its border.
Then a small U-Net on a 2×2 pixel-unshuffled grid sees that fill together
with the mask and predicts a correction inside the holes: the network only learns what the
smooth fill misses (edges running through a hole, shading). Known pixels are pasted back
unchanged, so the output equals the input wherever the mask says "known".

Trained by ``models/training/train_inpaint.py`` on scikit-image's sample images and
synthetic drawings with synthetic hole masks (strokes, boxes, blobs); weights ship in
``models/weights/`` as safetensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from models import catalog
from models.base import ImageModel
from models.weights import WeightsSpec, fetch, load_state_dict

NAME = "darkroom-inpaint"
LICENCE = catalog.SAMPLE_IMAGES_LICENCE
WEIGHTS = catalog.DARKROOM_INPAINT  # models/catalog.py: read by the registry without torch
EMPTY_VALUE = 0.5  # what a hole becomes when its image (or tile) has no known pixel at all
RELAX_SWEEPS = 8  # Jacobi sweeps per pyramid level (on training images: 16 gained 0.1 dB more, at twice the cost)


def pushpull_fill(x: torch.Tensor, known: torch.Tensor, sweeps: int = RELAX_SWEEPS) -> torch.Tensor:
    """Fill holes with a smooth surface through the known pixels around them.

    x: N×C×H×W float; known: N×1×H×W in {0, 1} (1 = known). Returns N×C×H×W float with the
    known pixels of ``x`` unchanged and every hole filled. Pure function, no learned parameters.

    Push: a 2×2 mask-weighted average per level, so a coarse pixel is known (with the mean of
    its known children) if any of its four children is, until no hole is left. Pull: from the
    coarsest level up, holes start from the bilinear interpolation of the level below and get
    ``sweeps`` Jacobi sweeps (each hole becomes the mean of its 3×3 neighbourhood, known pixels
    fixed, image borders replicated): a multigrid approximation of the harmonic (membrane) fill.
    """
    levels = [(x * known, known)]
    while levels[-1][0].shape[-1] > 1 or levels[-1][0].shape[-2] > 1:
        total, weight = levels[-1]
        if bool((weight > 0).all()):
            break
        levels.append((F.avg_pool2d(total, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)))
    total, weight = levels[-1]
    filled = torch.where(weight > 0, total / weight.clamp_min(1e-8), torch.full_like(total, EMPTY_VALUE))
    for total, weight in reversed(levels[:-1]):
        fixed = weight > 0
        value = total / weight.clamp_min(1e-8)
        filled = torch.where(
            fixed, value, F.interpolate(filled, size=total.shape[-2:], mode="bilinear", align_corners=False)
        )
        for _ in range(sweeps):
            mean = F.avg_pool2d(F.pad(filled, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            filled = torch.where(fixed, value, mean)
    return torch.where(known > 0, x, filled)


@dataclass(frozen=True)
class InpaintConfig:
    channels: int = 3
    features: int = 24  # on the unshuffled grid; doubled below it
    unshuffle: int = 2
    levels: int = 2  # stride-2 levels below the unshuffled grid
    bottom_blocks: int = 2  # residual blocks at the coarsest level

    def as_metadata(self) -> dict[str, str]:
        return {f"config.{k}": str(v) for k, v in asdict(self).items()}


class ResBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class DarkroomInpaint(nn.Module):
    """N×(C+1)×H×W → N×C×H×W; the last input channel is the mask (1 = known, 0 = hole).

    Image values in [0, 1] (hole pixels may hold anything: they are never read); any H, W
    (padded internally by replication). Known pixels are returned unchanged; the rest is
    clamped to [0, 1] in eval mode.
    """

    def __init__(self, cfg: InpaintConfig = InpaintConfig()):
        super().__init__()
        self.cfg = cfg
        r2 = cfg.unshuffle**2
        widths = [cfg.features * min(2**i, 2) for i in range(cfg.levels + 1)]
        self.head = nn.Conv2d((cfg.channels + 1) * r2, widths[0], 3, 1, 1)
        self.enc = nn.ModuleList(ResBlock(w) for w in widths[:-1])
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(widths, widths[1:]))
        self.bottom = nn.Sequential(*[ResBlock(widths[-1]) for _ in range(cfg.bottom_blocks)])
        self.up = nn.ModuleList(nn.Conv2d(b, a, 3, 1, 1) for a, b in zip(widths, widths[1:]))
        self.dec = nn.ModuleList(ResBlock(w) for w in widths[:-1])
        self.tail = nn.Conv2d(widths[0], cfg.channels * r2, 3, 1, 1)
        nn.init.zeros_(self.tail.weight)  # start as the plain push-pull fill
        nn.init.zeros_(self.tail.bias)

    def correction(self, filled: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Correction to the push-pull fill, N×C×H×W; H, W multiples of unshuffle·2^levels."""
        r = self.cfg.unshuffle
        feat = F.relu(self.head(F.pixel_unshuffle(torch.cat([filled - 0.5, known], dim=1), r)))
        skips = []
        for enc, down in zip(self.enc, self.down):
            feat = enc(feat)
            skips.append(feat)
            feat = F.relu(down(feat))
        feat = self.bottom(feat)
        for up, dec, skip in zip(reversed(self.up), reversed(self.dec), reversed(skips)):
            feat = dec(
                skip + F.relu(up(F.interpolate(feat, size=skip.shape[-2:], mode="bilinear", align_corners=False)))
            )
        return F.pixel_shuffle(self.tail(feat), r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg.channels
        if x.shape[1] != c + 1:
            raise ValueError(f"darkroom-inpaint takes {c} image channels + 1 mask channel, got {x.shape[1]} channels")
        image, known = x[:, :c], (x[:, c:] > 0.5).to(x.dtype)
        h, w = x.shape[-2:]
        m = self.cfg.unshuffle * 2**self.cfg.levels
        ph, pw = (-h) % m, (-w) % m
        both = torch.cat([pushpull_fill(image.float(), known.float()), known.float()], dim=1)
        if ph or pw:
            both = F.pad(both, (0, pw, 0, ph), mode="replicate")
        out = both[:, :c, :h, :w] + self.correction(both[:, :c], both[:, c:])[..., :h, :w]
        if not self.training:
            out = out.clamp(0, 1)
        # Pasted from the input itself, so known pixels come back bit for bit.
        return torch.where(known > 0, image, out.to(image.dtype))


def build(spec: WeightsSpec = WEIGHTS) -> ImageModel:
    """Fetch (sha256-checked) and load the shipped safetensors weights."""
    net = DarkroomInpaint(InpaintConfig())
    net.load_state_dict(load_state_dict(fetch(spec.uri, spec.sha256)))
    return ImageModel(
        name=NAME,
        module=net.eval(),
        scale=1,
        channels=3,
        supports_half=True,
        weights_sha256=spec.sha256,
        needs_mask=True,
    )
