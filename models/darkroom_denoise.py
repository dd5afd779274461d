"""darkroom-denoise: a small blind colour Gaussian denoiser (sigma 0–50 on the 0–255 scale).

DnCNN-style residual learning (the network predicts the noise, the output is input − noise),
run on a 2×2 pixel-unshuffled grid as in FFDNet so a few layers see a wide neighbourhood
cheaply. No noise-level input: the network is blind. Trained by
``models/training/train_denoise.py`` on scikit-image's sample images; weights ship in
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

NAME = "darkroom-denoise"
LICENCE = catalog.SAMPLE_IMAGES_LICENCE
WEIGHTS = catalog.DARKROOM_DENOISE  # models/catalog.py: read by the registry without torch


@dataclass(frozen=True)
class DenoiseConfig:
    channels: int = 3
    features: int = 48
    layers: int = 10  # 3×3 convolutions between the first and the last (in residual pairs)
    unshuffle: int = 2

    def as_metadata(self) -> dict[str, str]:
        return {f"config.{k}": str(v) for k, v in asdict(self).items()}


class ResBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class DarkroomDenoise(nn.Module):
    """N×C×H×W in [0, 1] → N×C×H×W; any H, W (odd sizes are padded); clamped in eval mode.

    head conv → ``layers // 2`` residual blocks (two convolutions each; skips keep the plain
    stack trainable without batch norm) → tail conv predicting the noise.
    """

    def __init__(self, cfg: DenoiseConfig = DenoiseConfig()):
        super().__init__()
        self.cfg = cfg
        grid = cfg.channels * cfg.unshuffle**2
        self.head = nn.Conv2d(grid, cfg.features, 3, 1, 1)
        self.body = nn.Sequential(*[ResBlock(cfg.features) for _ in range(cfg.layers // 2)])
        self.tail = nn.Conv2d(cfg.features, grid, 3, 1, 1)
        nn.init.zeros_(self.tail.weight)  # start as the identity (no noise predicted)
        nn.init.zeros_(self.tail.bias)

    def predict_noise(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        return self.tail(F.relu(feat + self.body(feat)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.cfg.unshuffle
        h, w = x.shape[-2:]
        ph, pw = (-h) % r, (-w) % r
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        noise = F.pixel_shuffle(self.predict_noise(F.pixel_unshuffle(xp, r)), r)[..., :h, :w]
        out = x - noise
        return out if self.training else out.clamp(0, 1)


def build(spec: WeightsSpec = WEIGHTS) -> ImageModel:
    """Fetch (sha256-checked) and load the shipped safetensors weights."""
    net = DarkroomDenoise(DenoiseConfig())
    net.load_state_dict(load_state_dict(fetch(spec.uri, spec.sha256)))
    return ImageModel(name=NAME, module=net.eval(), scale=1, channels=3, supports_half=True, weights_sha256=spec.sha256)
