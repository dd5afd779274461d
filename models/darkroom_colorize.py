"""darkroom-colorize: a colorizer fitted by darkroom — luminance kept, chroma predicted from it.

The usual recipe: keep the luminance, predict the chroma. The input's BT.601 luma Y is the
only thing the model sees; the two chroma planes (Cb, Cr) come from a **chroma curve**, the
least-squares fit of chroma against luma over the training images (``curve_knots`` values per
plane at evenly spaced luma levels, linearly interpolated), and are recombined with Y. A gray
image therefore keeps its exact tones up to clipping, and a colour image is recoloured from
its luma alone. The curve is the MSE-optimal colouring that depends on luma only: it predicts
the average colour of each tone of its training images — a warm cast in the mid-tones — and
knows nothing about objects.

Why no network: the only colour images darkroom may train on are seven scikit-image samples
(two of them photographs). A residual U-Net on top of the curve (114k parameters, and again
with 8k) learned them by heart: with ``stereo_motorcycle`` left out of training it made that
photo 1.8–2.0 dB *worse* than the curve alone, and with 114k parameters it also lost 0.9 dB to
the curve on the held-out test photos. So the shipped model is the curve; see
docs/quality.md for what it gains over the gray image and where it loses.

Fitted by ``models/training/train_colorize.py``; weights ship in ``models/weights/`` as
safetensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models import catalog
from models.base import ImageModel
from models.weights import WeightsSpec, fetch, load_state_dict

NAME = "darkroom-colorize"
LICENCE = catalog.SAMPLE_IMAGES_LICENCE
WEIGHTS = catalog.DARKROOM_COLORIZE  # models/catalog.py: read by the registry without torch

# Full-range BT.601 (JPEG's YCbCr): Y in [0, 1], Cb and Cr in [-0.5, 0.5].
_RGB_TO_YCC = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float32
)
_YCC_TO_RGB = torch.linalg.inv(_RGB_TO_YCC.double()).float()


def rgb_to_ycc(x: torch.Tensor) -> torch.Tensor:
    """N×3×H×W RGB in [0, 1] → N×3×H×W (Y in [0, 1], Cb, Cr in [-0.5, 0.5])."""
    return torch.einsum("ij,njhw->nihw", _RGB_TO_YCC.to(x.device, x.dtype), x)


def ycc_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycc` (not clamped)."""
    return torch.einsum("ij,njhw->nihw", _YCC_TO_RGB.to(x.device, x.dtype), x)


@dataclass(frozen=True)
class ColorizeConfig:
    curve_knots: int = (
        5  # chroma values per plane, at luma 0, 1/(k-1), …, 1 (chosen by leave-one-image-out, see train_colorize)
    )

    def as_metadata(self) -> dict[str, str]:
        return {f"config.{k}": str(v) for k, v in asdict(self).items()}


class DarkroomColorize(nn.Module):
    """N×3×H×W RGB in [0, 1] (gray: three equal channels) → N×3×H×W RGB, clamped to [0, 1].

    Only the luma of the input is used; any H, W. ``curve``: 2×curve_knots, the Cb and Cr at
    each knot (the 0–1 luma range split evenly).
    """

    def __init__(self, cfg: ColorizeConfig = ColorizeConfig()):
        super().__init__()
        self.cfg = cfg
        self.curve = nn.Parameter(torch.zeros(2, cfg.curve_knots), requires_grad=False)

    def curve_chroma(self, y: torch.Tensor) -> torch.Tensor:
        """N×1×H×W luma in [0, 1] → N×2×H×W chroma from the curve (linear interpolation)."""
        pos = y.clamp(0, 1) * (self.cfg.curve_knots - 1)
        lo = pos.floor().clamp(max=self.cfg.curve_knots - 2)
        frac = pos - lo
        idx = lo.long()[:, 0]  # N×H×W
        left, right = self.curve[:, idx], self.curve[:, idx + 1]  # 2×N×H×W
        return (left + (right - left) * frac[:, 0]).permute(1, 0, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = rgb_to_ycc(x.float())[:, :1]
        out = ycc_to_rgb(torch.cat([y, self.curve_chroma(y)], dim=1))
        return out.clamp(0, 1).to(x.dtype)


def build(spec: WeightsSpec = WEIGHTS) -> ImageModel:
    """Fetch (sha256-checked) and load the shipped safetensors weights."""
    net = DarkroomColorize(ColorizeConfig())
    net.load_state_dict(load_state_dict(fetch(spec.uri, spec.sha256)))
    return ImageModel(
        name=NAME,
        module=net.eval(),
        scale=1,
        channels=3,
        supports_half=True,
        weights_sha256=spec.sha256,
        colour_out=True,
    )
