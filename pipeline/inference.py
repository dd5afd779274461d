"""Running a chain of models over decoded images (no Ray here: the actor wraps this).

Images of the same size and dtype are stacked into batches of ``batch_size``. A gray
image goes through a 3-channel model as three equal channels and comes back as their
mean (unless a model makes colour, ``ImageModel.colour_out``); a failing batch is retried
image by image so one bad image cannot fail its neighbours.

Masks (inpainting). An image may come with a mask, H×W bool, True = known pixel. Only
models with ``needs_mask`` see it, as an extra last channel (1 = known, 0 = hole), resized
with nearest-neighbour to the size the image has reached in the chain, and sliced into
tiles with the image. Known pixels are pasted back from the model's own input afterwards.

Outscale. A model may be followed by a Lanczos-3 resize of its output to its input size ×
``outscale`` (Real-ESRGAN's ``--outscale``: e.g. a ×4 network used for ×2).

Precision (``resources.precision``). Each model computes in the dtype :func:`model_dtype` picks:
its weights are cast once (``module.to(dtype)``, as the model's ``supports_half`` /
``supports_bfloat16`` promise) and each batch on its way in, so no conversion happens per layer.
fp16 and bf16 outputs differ from fp32 by a few 8-bit levels (tests/pipeline/test_inference.py
states the measured bounds).

The GPU path. On CUDA a batch is stacked straight into pinned (page-locked) host memory and
copied to the device with ``non_blocking=True``; results come back into pinned buffers, also
asynchronously, and the batch's stream is synchronised before numpy sees them. Each batch runs
on a CUDA stream of its own (:func:`batch_stream`): with two batches in flight per actor (two
calls of the actor at once, from two threads), one batch's host→device and device→host copies run
on the copy engines while the other batch's kernels run, instead of queueing behind them on one
stream. The waits are per
stream, so a thread waiting for its results does not wait for the other batch's kernels. On the
CPU all of this is a no-op.

Channels-last. Modules and their inputs are channels-last (N×C×H×W indexed, H×W×C in memory) on
every device: it is cuDNN's layout for fp16/bf16 convolutions, and decoded pixels and the 8-bit
result buffer already are H×W×C, so no transpose is made on the way in or out. On the CPU it is
faster too: realesr-animevideov3, 4×128×128, fp32, 2 threads, 1.2–1.7× (median 7.3–7.7 s against
9.3–12.4 s per batch on a loaded 2-core machine).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from models import ImageModel
from models.base import CaptionModel
from models.resample import resize
from models.tiling import run_with_backoff, runs_whole, tiled_forward
from pipeline.images import Encoded
from pipeline.manifest import Stage


@dataclass
class Result:
    """pixels: H'×W'×C, same dtype and C as the input (C = 3 for a gray input after a
    ``colour_out`` model; unchanged after a captioning step); or error set (pixels None), failed
    at ``stage``; or, for an output the actor encoded itself (pipeline.execute.Encoding),
    ``encoded`` set and pixels None.
    ``known``: the image's mask, if it had one, carried on for later steps (at the input's size)."""

    pixels: np.ndarray | None
    seconds: float
    error: str | None = None
    error_type: str = "model_error"
    known: np.ndarray | None = None
    stage: str = Stage.MODEL
    encoded: Encoded | None = None
    caption: str | None = None  # what a captioning step said of the image (carried through later steps)


@dataclass
class Masked:
    """An image with its inpainting mask. pixels: H×W×C uint8/uint16; known: H×W bool,
    True = known pixel to keep, False = hole to fill."""

    pixels: np.ndarray
    known: np.ndarray


def pick_device(want_gpu: bool) -> torch.device:
    return torch.device("cuda") if want_gpu and torch.cuda.is_available() else torch.device("cpu")


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_dtype(model: ImageModel, precision: str, device: torch.device) -> torch.dtype:
    """The dtype ``model`` computes in on ``device`` under ``resources.precision``.

    precision: ``auto`` (fp16 on CUDA, fp32 elsewhere: CPU fp16/bf16 convolutions are no
    faster than fp32 there), ``fp32``, ``fp16`` or ``bf16``. A model that does not declare the
    requested half format safe (:meth:`ImageModel.supports`) runs in fp32.
    """
    if precision == "auto":
        want = torch.float16 if device.type == "cuda" else torch.float32
    elif precision in PRECISIONS:
        want = PRECISIONS[precision]
    else:
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    return want if model.supports(want) else torch.float32


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor (any dtype, strides kept) on ``device``.

    On CUDA the copy is asynchronous (``non_blocking``) from pinned memory: ``x`` itself if it is
    pinned, else a pinned staging copy (torch's caching host allocator keeps that block until the
    copy has run, so dropping it at once is safe). Kernels queued later on the same stream see the
    data; the calling thread goes on at once. Elsewhere ``x.to(device)`` (``x`` itself on the CPU).
    """
    if device.type != "cuda":
        return x.to(device)
    if not x.is_pinned():
        x = torch.empty_like(x, pin_memory=True).copy_(x)
    return x.to(device, non_blocking=True)


def to_host(y: torch.Tensor) -> torch.Tensor:
    """``y`` on the CPU, ready to read (strides kept).

    From CUDA: an asynchronous copy into a pinned buffer, then a wait for the current stream only
    (the batch's own, see :func:`batch_stream`): the copy and the kernels before it are done when
    this returns, other streams' work is not waited for. A CPU tensor is returned as it is."""
    if y.device.type != "cuda":
        return y
    host = torch.empty_like(y, device="cpu", pin_memory=True)
    host.copy_(y, non_blocking=True)
    torch.cuda.current_stream(y.device).synchronize()  # before anyone reads ``host``
    return host


def pinned_empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised CPU tensor, in pinned memory when ``device`` is CUDA (so that
    :func:`to_device` copies it asynchronously without a staging copy)."""
    return torch.empty(tuple(shape), dtype=dtype, pin_memory=device.type == "cuda")


def batch_stream(device: torch.device) -> contextlib.AbstractContextManager:
    """The context one batch runs in: on CUDA a stream from torch's pool (see the module
    docstring), made to wait for the work already queued on the current stream (the weights'
    upload); elsewhere nothing."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return torch.cuda.stream(stream)


def cast_call(module: torch.nn.Module, dtype: torch.dtype, memory_format: torch.memory_format) -> Callable:
    """``module`` as a function of a float batch N×C×H×W in [0, 1] on its device: the batch is cast
    to ``dtype`` and ``memory_format`` on the way in; the output keeps the module's dtype."""

    def call(x: torch.Tensor) -> torch.Tensor:
        return module(x.to(dtype=dtype, memory_format=memory_format))

    return call


class Chain:
    """Models applied in order. ``__call__`` maps a list of H×W×C uint8/uint16 arrays (and
    optionally one mask per image, see the module docstring) to Results.

    Pixels stay on the CPU; each model sees one tile of at most (tile + 2·tile_pad)² pixels
    per image on the device at a time (``tile=0``: whole images). ``tile_pad`` None: each
    model's own (``ImageModel.tile_context``, what keeps tiled output within one 8-bit level of
    untiled); a number overrides it for every model. On out-of-memory errors the
    batch, then the tile, is halved (models.tiling.run_with_backoff) and the smaller
    settings are kept for later batches. ``outscale``: per model, None or the output/input
    size ratio its output is resized to. ``precision``: ``resources.precision`` (see
    :func:`model_dtype`); ``dtypes`` holds what each model runs in.

    On CUDA two threads may call it at once (one per batch in flight): each batch has its own
    stream, and the shared settings (batch and tile size) only ever shrink.
    """

    def __init__(
        self,
        models: Sequence[ImageModel],
        device: torch.device,
        batch_size: int,
        tile: int = 0,
        tile_pad: int | None = None,
        outscale: Sequence[float | None] | None = None,
        precision: str = "auto",
    ):
        self.models = list(models)
        self.outscale = list(outscale) if outscale is not None else [None] * len(self.models)
        if len(self.outscale) != len(self.models):
            raise ValueError(f"{len(self.outscale)} outscale values for {len(self.models)} models")
        self.device = device
        self.batch_size = batch_size
        self.tile = tile
        self.tile_pad = tile_pad
        self.precision = precision
        self.dtypes = [model_dtype(m, precision, device) for m in self.models]
        self.memory_format = torch.channels_last  # see the module docstring
        self._calls = {}  # id(model) → the module as a function of a float32 batch on the device
        for m, dtype in zip(self.models, self.dtypes):
            m.tile_context()  # probed in float32, before the cast (the probe's input is float32)
            m.module.to(device, dtype).eval()
            m.module.to(memory_format=self.memory_format)
            self._calls[id(m)] = cast_call(m.module, dtype, self.memory_format)

    def __call__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> list[Result]:
        """masks: None, or one H×W bool array (True = known) or None per image."""
        masks = list(masks) if masks is not None else [None] * len(images)
        results: list[Result | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault((img.shape, img.dtype.str), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                outs = self._run_isolating([images[i] for i in chunk], [masks[i] for i in chunk])
                for i, result in zip(chunk, outs):
                    result.known = masks[i]
                    results[i] = result
        return results  # type: ignore[return-value]

    def _run_isolating(self, batch: list[np.ndarray], masks: list[np.ndarray | None]) -> list[Result]:
        try:
            t0 = time.perf_counter()
            outs = self.forward(batch, masks)
            share = (time.perf_counter() - t0) / len(batch)
            return [Result(o, share) for o in outs]
        except Exception as exc:
            if len(batch) == 1:
                return [Result(None, 0.0, f"{type(exc).__name__}: {exc}")]
            return [r for img, mask in zip(batch, masks) for r in self._run_isolating([img], [mask])]

    def _apply(
        self,
        model: ImageModel,
        x: torch.Tensor,
        tile: int,
        out: torch.Tensor | None = None,
        finish=None,
        peak: float | None = None,
    ) -> torch.Tensor:
        """One model over a CPU batch; returns a CPU float32 batch, or fills ``out`` with
        ``finish`` of it and returns ``out``. ``peak``: ``x`` holds integer levels 0…peak, turned
        into [0, 1] on the device (tile by tile when tiled, see models.tiling.tiled_forward)."""
        call = self._calls[id(model)]
        height, width = x.shape[-2:]
        if not runs_whole(height, width, tile) and float(model.scale).is_integer():
            pad, align = model.tile_context()
            return tiled_forward(
                call,
                x,
                int(model.scale),
                tile,
                pad if self.tile_pad is None else self.tile_pad,
                self.device,
                align=align,
                out=out,
                finish=finish,
                peak=peak,
            )
        # Whole images: one pinned, asynchronous copy each way (see the module docstring).
        x = to_device(x, self.device)
        y = call(x.float().div_(peak) if peak else x).float()
        if out is None:
            return to_host(y)
        # Finished on the device: only ``out``'s dtype (8-bit levels: a quarter of float32) comes back.
        out[...] = to_host(finish(y).to(out.dtype))
        return out

    @torch.inference_mode()
    def forward(self, batch: list[np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Same-shape arrays (+ optional same-size H×W bool masks, True = known) → processed
        arrays (same dtype; same channel count unless a model makes colour)."""
        with batch_stream(self.device):
            return self._forward(batch, masks)

    def _forward(self, batch: list[np.ndarray], masks: Sequence[np.ndarray | None] | None) -> list[np.ndarray]:
        dtype = batch[0].dtype
        peak = float(np.iinfo(dtype).max)
        stacked = pinned_empty((len(batch), *batch[0].shape), torch.from_numpy(np.empty(0, dtype)).dtype, self.device)
        np.stack(batch, out=stacked.numpy())
        pixels = stacked.permute(0, 3, 1, 2)  # integer levels, channels-first view
        channels = pixels.shape[1]
        x = None  # the batch as floats in [0, 1], made only when a model needs it so
        for i, (model, outscale) in enumerate(zip(self.models, self.outscale)):
            last = i == len(self.models) - 1
            if last and dtype == np.uint8 and outscale is None and not (model.needs_mask or model.colour_out):
                source, source_peak = (pixels, peak) if x is None else (x, None)
                if source.shape[1] == channels == model.channels:
                    # The last model writes 8-bit levels straight into the result, one finished run
                    # of rows at a time, and (as the first) reads its input levels tile by tile: no
                    # float copy of its input or output exists whole (4 bytes a sample, and as many
                    # again for each conversion), which is what big images run out of.
                    height, width = source.shape[-2:]
                    levels = torch.empty(
                        source.shape[0], *model.output_size(height, width), channels, dtype=torch.uint8
                    )
                    finish = lambda y: y.mul_(peak).clamp_(0, peak).round_()  # noqa: E731
                    self._run(model, source, out=levels.permute(0, 3, 1, 2), finish=finish, peak=source_peak)
                    return [a.numpy() for a in levels]
            if x is None:
                x = pixels.float() / peak
            height, width = x.shape[-2:]
            x = _match_channels(x, model.channels)
            x = self._apply_masked(model, x, masks) if model.needs_mask else self._run(model, x)
            if outscale is not None:
                x = resize(x.float(), round(height * outscale), round(width * outscale), "lanczos").clamp(0, 1)
            if model.colour_out:
                channels = 3
        # One full-size float temporary, then in place: each extra one costs as much as a
        # fast model's whole pass on large images (page faults of a fresh allocation).
        x = _match_channels(x.float(), channels).mul(peak).clamp_(0, peak).round_()
        out = x.to(torch.int32 if dtype == np.uint16 else torch.uint8)
        return [a.astype(dtype) for a in out.permute(0, 2, 3, 1).numpy()]

    def _run(
        self,
        model: ImageModel,
        x: torch.Tensor,
        out: torch.Tensor | None = None,
        finish=None,
        peak: float | None = None,
    ) -> torch.Tensor:
        """One model over a CPU batch, backing off on out-of-memory errors; into ``out`` if given
        (see _apply)."""
        done = 0  # images of the batch already in ``out``

        def into_out(b: torch.Tensor, t: int) -> torch.Tensor:
            nonlocal done
            self._apply(model, b, t, out[done : done + len(b)], finish, peak)
            done += len(b)
            return b.new_empty(len(b), 0)  # the pixels are in ``out``: nothing to concatenate

        # A model with tiling=False starts whole; only running out of memory tiles it.
        start = self.tile if model.tiling else 0
        fn = into_out if out is not None else (lambda b, t: self._apply(model, b, t))
        x, settings = run_with_backoff(fn, x, start)
        if model.tiling:
            self.tile = settings.tile
        self.batch_size = min(self.batch_size, settings.batch_size)
        return x if out is None else out

    def _apply_masked(
        self, model: ImageModel, x: torch.Tensor, masks: Sequence[np.ndarray | None] | None
    ) -> torch.Tensor:
        """A ``needs_mask`` model over a CPU batch: the mask rides along as the last channel."""
        if masks is None or any(m is None for m in masks):
            raise ValueError(f"{model.name} needs a mask (input.mask or a mask_uri column) and this image has none")
        known = torch.from_numpy(np.stack(masks)).float()[:, None]
        if known.shape[-2:] != x.shape[-2:]:  # an earlier step resized the image
            known = F.interpolate(known, size=x.shape[-2:], mode="nearest")
        y = self._run(model, torch.cat([x, known], dim=1))
        if y.shape[-2:] == x.shape[-2:]:
            # fp16 and the feathered tile blend can each move a known pixel by a rounding error.
            y = torch.where(known > 0, x, y.float())
        return y


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


class Captioner:
    """A captioning step, called like :class:`Chain`: each image's Result carries its caption
    and its pixels unchanged (later steps and the output see the image as it came). Images go
    to the model ``batch_size`` at a time; a failing batch is retried image by image."""

    def __init__(self, model: CaptionModel, device: torch.device, batch_size: int):
        self.model = model
        self.device = device
        self.batch_size = batch_size
        model.module.to(device).eval()

    def __call__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> list[Result]:
        masks = list(masks) if masks is not None else [None] * len(images)
        results: list[Result] = []
        for start in range(0, len(images), self.batch_size):
            results += self._run_isolating(list(images[start : start + self.batch_size]))
        for result, mask in zip(results, masks):
            result.known = mask
        return results

    def _run_isolating(self, batch: list[np.ndarray]) -> list[Result]:
        try:
            t0 = time.perf_counter()
            texts = self.model.caption(batch, self.device)
            share = (time.perf_counter() - t0) / len(batch)
            return [Result(image, share, caption=text) for image, text in zip(batch, texts, strict=True)]
        except Exception as exc:
            if len(batch) == 1:
                return [Result(None, 0.0, f"{type(exc).__name__}: {exc}")]
            return [r for image in batch for r in self._run_isolating([image])]
