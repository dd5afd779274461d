"""Classical resampling (identity, bicubic, Lanczos) as torch modules.

Separable resampling with per-axis gather tables: each output pixel along an axis is a
weighted sum of ``taps`` input pixels, so memory is O(output pixels × taps), never a dense
out×in matrix. Coordinates follow the half-pixel convention (PIL, OpenCV's INTER_CUBIC,
MATLAB ``imresize``); downscaling widens the kernel by 1/scale (antialiasing); edges
replicate the border pixel.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


def cubic_kernel(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (a = -0.5, as in MATLAB and PIL); support 2."""
    x = x.abs()
    x2, x3 = x * x, x * x * x
    near = (a + 2) * x3 - (a + 3) * x2 + 1
    far = a * x3 - 5 * a * x2 + 8 * a * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def lanczos3_kernel(x: torch.Tensor) -> torch.Tensor:
    """Lanczos window with a = 3; support 3."""
    return torch.where(x.abs() < 3, torch.sinc(x) * torch.sinc(x / 3), torch.zeros_like(x))


KERNELS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    "bicubic": (cubic_kernel, 2.0),
    "lanczos": (lanczos3_kernel, 3.0),
}


def _axis_table(in_size: int, out_size: int, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices and weights, both out_size×taps (int64, float32), for one axis."""
    fn, support = KERNELS[kernel]
    scale = out_size / in_size
    stretch = max(1.0, 1.0 / scale)  # widen the kernel when shrinking, to antialias
    taps = int(math.ceil(support * stretch)) * 2 + 1
    centers = (torch.arange(out_size, dtype=torch.float64) + 0.5) / scale - 0.5
    first = torch.floor(centers).to(torch.int64) - taps // 2
    idx = first[:, None] + torch.arange(taps)[None, :]
    weights = fn((idx.to(torch.float64) - centers[:, None]) / stretch)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return idx.clamp(0, in_size - 1), weights.to(torch.float32)


def resample_axis(x: torch.Tensor, out_size: int, dim: int, kernel: str) -> torch.Tensor:
    """Resample ``x`` (any float tensor) along ``dim`` to ``out_size`` samples."""
    in_size = x.shape[dim]
    if in_size == out_size:
        return x
    idx, w = _axis_table(in_size, out_size, kernel)
    moved = x.movedim(dim, -1)
    gathered = moved[..., idx.to(x.device)]  # …×out×taps
    out = (gathered * w.to(device=x.device, dtype=x.dtype)).sum(-1)
    return out.movedim(-1, dim)


def resize(x: torch.Tensor, height: int, width: int, kernel: str) -> torch.Tensor:
    """Resize a float batch N×C×H×W to N×C×height×width (values are not clamped)."""
    return resample_axis(resample_axis(x, height, -2, kernel), width, -1, kernel)


class Resample(nn.Module):
    """Scale by a constant factor with a classical kernel; output is clamped to [0, 1]."""

    def __init__(self, scale: float, kernel: str):
        super().__init__()
        self.scale = scale
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return resize(x, round(h * self.scale), round(w * self.scale), self.kernel).clamp(0, 1)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
