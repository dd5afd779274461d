"""SRVGGNetCompact: Real-ESRGAN's compact super-resolution network.

A plain stack of 3×3 convolutions with PReLU, then a pixel shuffle, plus the input
upsampled by nearest neighbour as a residual. State-dict keys follow Real-ESRGAN's
layout (``body.{i}.weight``), which spandrel and other tools also load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.ncnn import NcnnFormatError, NcnnLayer


@dataclass(frozen=True)
class SRVGGConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64
    convs: int = 16
    upscale: int = 4


class SRVGGNetCompact(nn.Module):
    """N×C×H×W float in [0, 1] → N×C×(H·upscale)×(W·upscale), unclamped."""

    def __init__(self, cfg: SRVGGConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.features, 3, 1, 1), nn.PReLU(cfg.features)]
        for _ in range(cfg.convs):
            layers += [nn.Conv2d(cfg.features, cfg.features, 3, 1, 1), nn.PReLU(cfg.features)]
        layers.append(nn.Conv2d(cfg.features, cfg.out_channels * cfg.upscale**2, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(cfg.upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=self.cfg.upscale, mode="nearest")


def state_dict_from_ncnn(layers: list[NcnnLayer]) -> tuple[SRVGGConfig, dict[str, torch.Tensor]]:
    """Map an ncnn SRVGGNetCompact export to (config, state_dict).

    The export lists conv, PReLU, conv, PReLU, …, conv in the same order as ``body``.
    """
    weighted = [layer for layer in layers if layer.type in ("Convolution", "PReLU")]
    convs = [layer for layer in weighted if layer.type == "Convolution"]
    shuffles = [layer for layer in layers if layer.type == "PixelShuffle"]
    if len(convs) < 2 or not shuffles:
        raise NcnnFormatError("not an SRVGGNetCompact export (need ≥2 convolutions and a PixelShuffle)")
    upscale = int(shuffles[0].params[0])
    first, last = convs[0].weights["weight"], convs[-1].weights["weight"]
    cfg = SRVGGConfig(
        in_channels=first.shape[1],
        out_channels=last.shape[0] // upscale**2,
        features=first.shape[0],
        convs=len(convs) - 2,
        upscale=upscale,
    )
    sd: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(weighted):
        if layer.type == "Convolution":
            sd[f"body.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(layer.weights["weight"]))
            sd[f"body.{i}.bias"] = torch.from_numpy(layer.weights["bias"])
        else:
            sd[f"body.{i}.weight"] = torch.from_numpy(layer.weights["slope"])
    return cfg, sd
