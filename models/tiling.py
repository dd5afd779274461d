"""Tiled inference with feathered seams, and a retry policy for out-of-memory errors.

Pure PyTorch, no Ray: the inference chain decides when to use it.

Tiling. An image of at most ``tile``² pixels runs whole, whatever its shape: one call
costs the device no more memory than one core, and tiling it would only add the overlaps
and the blending (+67 % time for a 1152×864 image at tile 512 on CPU). A larger image is
cut into ``tile``×``tile`` cores. Each core is run through the
network together with ``tile_pad`` pixels of context on every side (clipped at the image
border, where the network then sees the same border as it would untiled), so only one
padded tile is on the device at a time. Only integer scales are supported: a core of
``t`` input pixels must map to exactly ``t·scale`` output pixels for tiles to line up on
the output grid, which a fractional scale cannot promise (round(t·1.5) depends on t).

Blending (``blend="feather"``, the default). The outer half of each tile's context is
thrown away: those pixels are nearest the tile's artificial edge, where the network saw
zero padding instead of the neighbouring image. The inner half of the context is kept
and overlaps the neighbouring tile's kept region by ``2·(tile_pad // 2)`` pixels; in that
band the two tiles are mixed with complementary linear ramps. So

* with ``tile_pad // 2`` at least the network's receptive-field radius, every kept pixel
  is exact and the result equals the untiled output (up to float rounding);
* with a smaller ``tile_pad`` the residual error is spread over the band as a gradual
  ramp instead of a step at the seam, which is what makes a seam visible.

``blend="crop"`` keeps exactly each core (plain crop, as in Real-ESRGAN's tile mode): it is
exact once ``tile_pad`` reaches the receptive-field radius (half what feathering needs) but
leaves a hard step at every seam when it does not. Where cores overlap (the last row and
column are shifted back to stay full-size) the overlapping predictions are averaged.

Feathering is the default because some networks have receptive fields far wider than any
affordable ``tile_pad`` (RRDBNet, below), so a short pad must degrade gracefully. On
realesr-animevideov3 with tile 32 and tile_pad 2–10, feathering halved the mean error jump
across seams (e.g. 0.24 → 0.11 grey levels at pad 10) at about the same maximum error.

Context per model. How much context a tile needs is a property of the network, so each model
has its own default ``tile_pad`` (``ImageModel.tile_pad``; a job's ``resources.tile_pad`` still
overrides it). :func:`receptive_field` derives it from the network itself, by module inspection that
works on any ``nn.Module``: each ``nn.Conv2d`` met in a forward pass adds
(kernel − 1) / 2 × dilation of its own input's pixels, converted to network-input pixels by
that input's resolution relative to the network's input (so convolutions after a ×2 upsample
count half, after a stride-2 one twice). Summing over all convolutions is the longest path
through plain, residual and densely connected stacks, an upper bound where branches run in
parallel. ``ReceptiveField.feather_pad`` is the ``tile_pad`` that makes feathered tiles exact;
``ReceptiveField.align`` the grid tiles must start on for networks that work on a coarser grid
(pixel-unshuffle, strided convolutions). Where that bound is so wide that tiles would be
pointless (RRDBNet: 348 input pixels for realesrgan-x4plus, a pad of 698 around a 512 tile),
the model's builder sets a pad measured to keep tiled output within one grey level instead,
and records the figure (models/realesrgan.py).

Out-of-memory back-off. :func:`run_with_backoff` retries a failing call with half the
batch, then (at batch 1) with half the tile size, and reports the settings that worked
so later batches can start from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_START_TILE = 512
DEFAULT_TILE_PAD = 16  # for networks that cannot be inspected (ImageModel.tile_context)


@dataclass(frozen=True)
class _AxisTile:
    """One tile along one axis, in input pixels: read [read0, read1), keep [keep0, keep1)."""

    read0: int
    read1: int
    keep0: int
    keep1: int
    weight: torch.Tensor  # (keep1 - keep0)·scale float32 weights, normalised across tiles


def _core_spans(length: int, tile: int, align: int = 1) -> list[tuple[int, int]]:
    """Cores of ``tile`` pixels covering [0, length); the last is shifted back to stay full-size.

    Full-size tiles keep every call the same shape (cuDNN autotuning and compiled graphs
    reuse their plan) and avoid a sliver tile that would be mostly context. Every core starts
    on the ``align`` grid (``tile`` is a multiple of it), so the last one starts up to
    ``align`` − 1 pixels earlier and is that much longer.
    """
    if tile <= 0 or length <= tile:
        return [(0, length)]
    last = (length - tile) // align * align
    return [(s, s + tile) for s in range(0, last, tile)] + [(last, length)]


def _ramp(n: int) -> torch.Tensor:
    """n weights rising linearly in (0, 1); sampled at pixel centres so none is exactly 0."""
    return (torch.arange(n, dtype=torch.float32) + 0.5) / n


def _axis_plan(length: int, tile: int, pad: int, scale: int, feather: bool, align: int = 1) -> list[_AxisTile]:
    margin = pad // 2 if feather else 0
    band = 2 * margin * scale  # ramp length in output pixels
    plans = []
    total = torch.zeros(length * scale)
    for c0, c1 in _core_spans(length, tile, align):
        read0, read1 = max(0, c0 - pad), min(length, c1 + pad)
        keep0, keep1 = max(0, c0 - margin), min(length, c1 + margin)
        n = (keep1 - keep0) * scale
        w = torch.ones(n)
        if band:
            up = torch.ones(n)
            down = torch.ones(n)
            k = min(band, n)
            if keep0 > 0:  # no neighbour to blend with at the image border
                up[:k] = _ramp(band)[:k]
            if keep1 < length:
                down[n - k :] = _ramp(band).flip(0)[band - k :]
            w = torch.minimum(up, down)
        total[keep0 * scale : keep1 * scale] += w
        plans.append((read0, read1, keep0, keep1, w))
    # Adjacent ramps already sum to 1; dividing by the total also covers overlapping
    # cores (the shifted last tile) and tiles narrower than the ramp band.
    return [_AxisTile(r0, r1, k0, k1, w / total[k0 * scale : k1 * scale]) for r0, r1, k0, k1, w in plans]


def _integer_scale(scale: float) -> int:
    if float(scale) != int(scale) or int(scale) < 1:
        raise ValueError(f"tiled inference needs a positive integer scale, got {scale}")
    return int(scale)


@torch.no_grad()
def tiled_forward(
    module: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scale: int,
    tile: int,
    tile_pad: int,
    device: torch.device | str,
    *,
    blend: str = "feather",
    align: int = 1,
    out: torch.Tensor | None = None,
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
    peak: float | None = None,
) -> torch.Tensor:
    """Run ``module`` over ``x`` one padded tile at a time; see the module docstring.

    module: maps a float tensor n×C×h×w in [0, 1] on ``device`` to n×C'×h·scale×w·scale
        (any float dtype, e.g. fp16 under autocast; values are not clamped here).
    x: CPU float tensor N×C×H×W, values in [0, 1]. It stays on the CPU; only one padded
        tile of at most (tile + 2·tile_pad)² pixels per image is moved to ``device``.
    scale: integer output/input size ratio of ``module`` (1, 2, 4, …).
    tile: core size in input pixels; 0, or an image of at most tile² pixels, means one
        call on the whole tensor.
    tile_pad: context pixels on each side of a core, clipped at the image border.
    blend: ``"feather"`` (linear ramps over the inner half of the context) or ``"crop"``.
    align: every tile starts on this grid of input pixels (``ReceptiveField.align``); ``tile``
        is rounded down and ``tile_pad`` up to a multiple of it.
    out: optional CPU tensor N×C'×H·scale×W·scale of any dtype and strides (e.g. a permuted
        view of an N×H'×W'×C' uint8 buffer) that receives the result. The whole result then
        never exists in float: the tiles are blended one row of tiles at a time, and each run
        of output rows that no later tile touches is written into ``out`` at once, so the float
        working set is one row of tiles (plus the blend band) instead of the whole output.
    finish: applied to each finished float block (N×C'×rows×W·scale, owned by this
        function, may be changed in place) before it is written into ``out``, e.g. to turn
        [0, 1] into rounded 8-bit levels.
    peak: set when ``x`` holds integer levels 0…peak (e.g. decoded uint8 pixels, as a
        channels-first view) instead of floats: each piece is turned into [0, 1] as it is cut,
        on the device, so no float copy of the whole input exists.

    Returns ``out`` if given, else a new CPU tensor N×C'×H·scale×W·scale with ``x``'s dtype.
    Gradients are not tracked: a graph spanning all tiles would keep every tile's
    activations alive.
    """
    if tile < 0 or tile_pad < 0:
        raise ValueError(f"tile and tile_pad must be ≥ 0, got {tile} and {tile_pad}")
    if blend not in ("feather", "crop"):
        raise ValueError(f"blend must be 'feather' or 'crop', got {blend!r}")
    if x.device.type != "cpu":
        raise ValueError(f"x must be a CPU tensor (tiles are moved to {device} one by one), got {x.device}")
    n, _, h, w = x.shape
    dtype = x.dtype if x.is_floating_point() else torch.float32

    def emit(block: torch.Tensor, row0: int) -> None:
        out[:, :, row0 : row0 + block.shape[2]] = finish(block) if finish else block

    def to_device(piece: torch.Tensor) -> torch.Tensor:
        piece = piece.to(device)
        return piece.float().div_(peak) if peak else piece

    if runs_whole(h, w, tile):
        # Nothing to stitch, so any scale works here.
        y = module(to_device(x)).to("cpu", dtype)
        if out is None:
            return finish(y) if finish else y
        emit(y, 0)
        return out

    s = _integer_scale(scale)
    tile, tile_pad = max(align, tile // align * align), _round_up(tile_pad, align)
    rows = _axis_plan(h, tile, tile_pad, s, blend == "feather", align)
    cols = _axis_plan(w, tile, tile_pad, s, blend == "feather", align)
    col_weights = [c.weight.to(device) for c in cols]
    carry: torch.Tensor | None = None  # rows the previous row of tiles left unfinished
    for j, r in enumerate(rows):
        row_weight = r.weight.to(device)
        acc: torch.Tensor | None = None  # output rows [r.keep0·s, r.keep1·s), whole width
        for c, col_weight in zip(cols, col_weights):
            piece = to_device(x[:, :, r.read0 : r.read1, c.read0 : c.read1])
            y = module(piece)
            want = (r.read1 - r.read0) * s, (c.read1 - c.read0) * s
            if y.dim() != 4 or y.shape[0] != n or tuple(y.shape[-2:]) != want:
                raise ValueError(
                    f"module mapped {tuple(piece.shape)} to {tuple(y.shape)}; "
                    f"expected N×C×{want[0]}×{want[1]} for scale {s}"
                )
            if out is None:
                out = torch.empty(n, y.shape[1], h * s, w * s, dtype=dtype)
            if acc is None:
                acc = torch.zeros(n, y.shape[1], (r.keep1 - r.keep0) * s, w * s, dtype=dtype)
                if carry is not None:  # keep0 never decreases, so the carried rows start acc
                    acc[:, :, : carry.shape[2]] += carry
            kept = y[
                :,
                :,
                (r.keep0 - r.read0) * s : (r.keep1 - r.read0) * s,
                (c.keep0 - c.read0) * s : (c.keep1 - c.read0) * s,
            ]
            # Weight on the device (cheap there) and bring back only the kept region.
            weighted = kept.float() * (row_weight[:, None] * col_weight[None, :])
            acc[:, :, :, c.keep0 * s : c.keep1 * s] += weighted.to("cpu", dtype)
            # Otherwise this tile's tensors stay alive through the next module call,
            # doubling the peak device memory.
            del piece, y, kept, weighted
        assert acc is not None
        # Rows above the next row of tiles' kept region are final; the rest is carried on.
        done = (rows[j + 1].keep0 if j + 1 < len(rows) else h) * s - r.keep0 * s
        carry = acc[:, :, done:].clone() if done < acc.shape[2] else None
        emit(acc[:, :, :done], r.keep0 * s)
        del acc
    assert out is not None
    return out


# ----------------------------------------------------------------------------------------
# Context per model


@dataclass(frozen=True)
class ReceptiveField:
    """``radius``: how far, in input pixels, an output pixel's value can depend on input pixels
    away from it. ``align``: the grid, in input pixels, the network's coarsest layer works on
    (2 after a pixel-unshuffle by 2 or a stride-2 convolution, 8 after three): a tile must start
    on that grid, or its pixels fall into other cells than untiled and the outputs differ."""

    radius: float
    align: int

    @property
    def feather_pad(self) -> int:
        """The ``tile_pad`` that makes feathered tiles exact: only the inner half of the context
        is kept (module docstring), so twice the radius, rounded up to the grid."""
        return _round_up(2 * math.ceil(self.radius), self.align)


@torch.no_grad()
def receptive_field(module: nn.Module, in_channels: int, size: int = 32) -> ReceptiveField:
    """The receptive field of ``module``, from the ``nn.Conv2d`` layers a forward pass calls (see
    the module docstring): radius = the sum of (kernel − 1) / 2 × dilation in each layer's input
    pixels, scaled to the network's input; align = the largest network-input pixels per pixel
    of a layer's input or output. One forward pass on a 1×``in_channels``×``size``×``size`` tensor of zeros
    (on the module's device), so it works on whatever ``nn.Module`` builds the network. Other
    operators (resampling, pooling, attention, global statistics) are not counted: a model with
    a global term is never exactly equal when tiled."""
    radius, align = 0.0, 1.0

    def add(conv: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal radius, align
        step = size / inputs[0].shape[-1]  # network-input pixels per pixel of this layer's input
        radius += max((k - 1) / 2 * d for k, d in zip(conv.kernel_size, conv.dilation)) * step
        align = max(align, size / output.shape[-1])  # a strided layer's output is on a coarser grid

    hooks = [m.register_forward_hook(add) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        param = next(module.parameters(), None)
        module(torch.zeros(1, in_channels, size, size, device=param.device if param is not None else "cpu"))
    finally:
        for h in hooks:
            h.remove()
    return ReceptiveField(radius, round(align))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# ----------------------------------------------------------------------------------------
# Out-of-memory back-off


@dataclass(frozen=True)
class BackoffSettings:
    """The batch size and tile size (0 = untiled) that last ran without running out of memory."""

    batch_size: int
    tile: int


def is_out_of_memory(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """True for CUDA's OutOfMemoryError, any RuntimeError saying "out of memory" (CUDA,
    MPS, and older torch versions phrase it so), and instances of ``extra``."""
    oom_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(exc, (oom_type, torch.cuda.OutOfMemoryError) + tuple(extra)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc)


def runs_whole(height: int, width: int, tile: int) -> bool:
    """Whether :func:`tiled_forward` runs a height×width image in one call (tile 0 = always)."""
    return tile <= 0 or height * width <= tile * tile


def smaller_tile(tile: int, height: int, width: int, start_tile: int, min_tile: int) -> int | None:
    """Next tile size to try after ``tile`` ran out of memory on height×width images; None
    when no smaller tile (≥ min_tile) would split them."""
    candidate = start_tile if tile <= 0 else tile // 2
    while candidate > 0 and runs_whole(height, width, candidate):
        candidate //= 2  # skip sizes with which the image would again run whole
    candidate = max(candidate, min_tile)
    if runs_whole(height, width, candidate) or (not runs_whole(height, width, tile) and candidate >= tile):
        return None
    return candidate


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_backoff(
    fn: Callable[[torch.Tensor, int], torch.Tensor],
    batch: torch.Tensor,
    tile: int,
    min_tile: int = 32,
    *,
    start_tile: int = DEFAULT_START_TILE,
    oom_errors: tuple[type[BaseException], ...] = (),
) -> tuple[torch.Tensor, BackoffSettings]:
    """Call ``fn(batch, tile)``, shrinking the work on out-of-memory errors.

    fn: maps a batch n×C×H×W (a slice of ``batch`` along dim 0) and a tile size (0 =
        untiled) to an output whose first dimension is n, e.g.
        ``lambda b, t: tiled_forward(module, b, scale, t, pad, device)``.
    batch: N×C×H×W tensor (any dtype; passed to ``fn`` as is, in slices).
    tile: tile size to start with; 0 = untiled.
    min_tile: the smallest tile size tried before giving up.
    start_tile: first tile size tried when ``tile`` is 0 (halved further while the image
        would still run whole with it, see :func:`runs_whole`).
    oom_errors: extra exception types treated as out-of-memory (tests inject one).

    On an out-of-memory error the batch is halved first (the halves run one after the
    other and their outputs are concatenated); at batch 1 the tile size is halved, down
    to ``min_tile``; then the error is re-raised. Other errors propagate at once. Settings
    only ever shrink: once a smaller batch or tile was needed, the rest of ``batch`` uses
    it too.

    Returns (the outputs concatenated along dim 0, the settings that worked last).
    """
    if batch.shape[0] == 0:
        return fn(batch, tile), BackoffSettings(0, tile)
    height, width = batch.shape[-2:]
    batch_size, cur_tile = batch.shape[0], tile
    outputs = []
    start = 0
    while start < batch.shape[0]:
        chunk = batch[start : start + batch_size]
        try:
            out = fn(chunk, cur_tile)
        except Exception as exc:
            if not is_out_of_memory(exc, oom_errors):
                raise
            if chunk.shape[0] > 1:
                batch_size = (chunk.shape[0] + 1) // 2
            else:
                smaller = smaller_tile(cur_tile, height, width, start_tile, min_tile)
                if smaller is None:
                    raise
                cur_tile = smaller
        else:
            outputs.append(out)
            start += chunk.shape[0]
            continue
        # Freed only here, outside the except block: until then the live traceback still
        # references the failed call's frames and, through them, its device tensors.
        _free_device_memory()
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0], BackoffSettings(batch_size, cur_tile)
