"""darkroom-sr-x4: a small ×4 super-resolution network trained by darkroom for fidelity (L1, PSNR).

A residual CNN on the low-resolution grid (EDSR-like blocks without batch norm), a pixel
shuffle to ×4, plus the input upsampled bicubically as a global residual: the network only
learns the detail bicubic misses. Trained by ``models/training/train_sr.py`` on
scikit-image's sample images (see the weights file's metadata); weights ship in
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

NAME = "darkroom-sr-x4"
LICENCE = catalog.SAMPLE_IMAGES_LICENCE
WEIGHTS = catalog.DARKROOM_SR  # models/catalog.py: read by the registry without torch


@dataclass(frozen=True)
class SRConfig:
    channels: int = 3
    features: int = 32
    blocks: int = 6
    upscale: int = 4

    def as_metadata(self) -> dict[str, str]:
        return {f"config.{k}": str(v) for k, v in asdict(self).items()}


class ResBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class DarkroomSR(nn.Module):
    """N×C×H×W in [0, 1] → N×C×4H×4W; clamped to [0, 1] in eval mode."""

    def __init__(self, cfg: SRConfig = SRConfig()):
        super().__init__()
        self.cfg = cfg
        self.head = nn.Conv2d(cfg.channels, cfg.features, 3, 1, 1)
        self.body = nn.Sequential(*[ResBlock(cfg.features) for _ in range(cfg.blocks)])
        self.tail = nn.Conv2d(cfg.features, cfg.channels * cfg.upscale**2, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(cfg.upscale)
        nn.init.zeros_(self.tail.weight)  # start as plain bicubic
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        feat = feat + self.body(feat)
        base = F.interpolate(x, scale_factor=self.cfg.upscale, mode="bicubic", align_corners=False)
        out = base + self.shuffle(self.tail(feat))
        return out if self.training else out.clamp(0, 1)


def config_from_metadata(meta: dict[str, str]) -> SRConfig:
    fields = {k.split(".", 1)[1]: int(v) for k, v in meta.items() if k.startswith("config.")}
    return SRConfig(**fields)


def build(spec: WeightsSpec = WEIGHTS) -> ImageModel:
    """Fetch (sha256-checked) and load the shipped safetensors weights."""
    net = DarkroomSR(SRConfig())
    net.load_state_dict(load_state_dict(fetch(spec.uri, spec.sha256)))
    return ImageModel(
        name=NAME, module=net.eval(), scale=spec.scale, channels=3, supports_half=True, weights_sha256=spec.sha256
    )
