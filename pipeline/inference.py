"""Running a chain of models over decoded images (no Ray here: the actor wraps this).

Images of the same size and dtype are stacked into batches of ``batch_size``. A gray
image goes through a 3-channel model as three equal channels and comes back as their
mean; a failing batch is retried image by image so one bad image cannot fail its
neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from models import ImageModel
from models.resample import resize
from models.tiling import run_with_backoff, tiled_forward


@dataclass
class Result:
    """pixels: H'×W'×C, same dtype and C as the input; or error set (pixels None)."""

    pixels: np.ndarray | None
    seconds: float
    error: str | None = None
    error_type: str = "model_error"


def pick_device(want_gpu: bool) -> torch.device:
    return torch.device("cuda") if want_gpu and torch.cuda.is_available() else torch.device("cpu")


class Chain:
    """Models applied in order. ``__call__`` maps a list of H×W×C uint8/uint16 arrays to Results.

    Pixels stay on the CPU; each model sees one tile of at most (tile + 2·tile_pad)² pixels
    per image on the device at a time (``tile=0``: whole images). On out-of-memory errors the
    batch, then the tile, is halved (models.tiling.run_with_backoff) and the smaller
    settings are kept for later batches.
    """

    def __init__(
        self, models: Sequence[ImageModel], device: torch.device, batch_size: int, tile: int = 0, tile_pad: int = 16
    ):
        self.models = list(models)
        self.device = device
        self.batch_size = batch_size
        self.tile = tile
        self.tile_pad = tile_pad
        # fp16 only where every model says it is safe, and only on a GPU (CPU fp16 is slow).
        self.half = device.type == "cuda" and all(m.supports_half for m in self.models)
        for m in self.models:
            m.module.to(device).eval()
            if device.type == "cuda":
                m.module.to(memory_format=torch.channels_last)

    def __call__(self, images: Sequence[np.ndarray]) -> list[Result]:
        results: list[Result | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault((img.shape, img.dtype.str), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for i, result in zip(chunk, self._run_isolating([images[i] for i in chunk])):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _run_isolating(self, batch: list[np.ndarray]) -> list[Result]:
        try:
            t0 = time.perf_counter()
            outs = self.forward(batch)
            share = (time.perf_counter() - t0) / len(batch)
            return [Result(o, share) for o in outs]
        except Exception as exc:
            if len(batch) == 1:
                return [Result(None, 0.0, f"{type(exc).__name__}: {exc}")]
            return [r for img in batch for r in self._run_isolating([img])]

    def _apply(self, model: ImageModel, x: torch.Tensor, tile: int) -> torch.Tensor:
        """One model over a CPU batch; returns a CPU float32 batch."""
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.half):
            if tile and float(model.scale).is_integer():
                return tiled_forward(model.module, x, int(model.scale), tile, self.tile_pad, self.device)
            return model.module(x.to(self.device)).float().cpu()

    @torch.inference_mode()
    def forward(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """Same-shape arrays → processed arrays (same dtype and channel count)."""
        dtype = batch[0].dtype
        peak = float(np.iinfo(dtype).max)
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / peak
        channels = x.shape[1]
        for model in self.models:
            x = _match_channels(x, model.channels)
            x, settings = run_with_backoff(lambda b, t, m=model: self._apply(m, b, t), x, self.tile)
            self.tile = settings.tile
            self.batch_size = min(self.batch_size, settings.batch_size)
        x = _match_channels(x.float(), channels).clamp(0, 1)
        out = (x * peak).round().to(torch.int32 if dtype == np.uint16 else torch.uint8)
        return [a.astype(dtype) for a in out.permute(0, 2, 3, 1).numpy()]


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot feed {x.shape[1]} channels to a {channels}-channel model")


def resize_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize one H×W uint8/uint16 plane (an alpha channel) with bicubic, same dtype."""
    if plane.shape == (height, width):
        return plane
    peak = float(np.iinfo(plane.dtype).max)
    x = torch.from_numpy(plane.astype(np.float32) / peak)[None, None]
    y = resize(x, height, width, "bicubic").clamp(0, 1)[0, 0]
    return (y * peak).round().numpy().astype(plane.dtype)
