"""Tiled inference against untiled inference on small real networks, and the OOM back-off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models import default_registry, tiling
from models.tiling import BackoffSettings, is_out_of_memory, run_with_backoff, tiled_forward

LEVEL = 1 / 255  # one 8-bit grey level: differences below it vanish when the output is saved
RADIUS = 4  # receptive-field radius of TinySR, in input pixels (four 3×3 convolutions)


class TinySR(nn.Module):
    """SRVGG-shaped: 3×3 convs + PixelShuffle, plus the nearest-upsampled input as residual."""

    def __init__(self, scale: int, features: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(3, features, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(features, features, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(features, features, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(features, 3 * scale * scale, 3, 1, 1),
            nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


class GlobalTone(nn.Module):
    """TinySR plus a term from whole-input statistics (as in channel attention or instance
    norm): each tile sees a different mean, so no amount of context makes tiles agree."""

    def __init__(self, scale: int):
        super().__init__()
        self.local = TinySR(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local(x) + 0.5 * x.mean(dim=(2, 3), keepdim=True)


class Recorder(nn.Module):
    """Passes through to ``inner``, remembering the shape and device of every input."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[tuple[int, ...], torch.device]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((tuple(x.shape), x.device))
        return self.inner(x)


@pytest.fixture(autouse=True)
def _one_thread():
    # These tensors are tiny: intra-op threads only add synchronisation, which costs most
    # when the test machine is busy.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def image(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def untiled(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------
# tiled_forward


@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize(
    ("blend", "pad"),
    # Exact once the kept context covers the receptive field: all of it for crop, the
    # inner half for feather.
    [("feather", 2 * RADIUS), ("crop", RADIUS)],
)
# 16 divides neither; 12 < tile; 33 = 16 + 16 + 1: the last row of tiles is shifted back onto the
# second, so three rows of tiles add to the same output rows.
@pytest.mark.parametrize(("n", "h", "w"), [(2, 37, 29), (3, 12, 50), (1, 33, 40)])
def test_matches_untiled(scale, blend, pad, n, h, w):
    net = TinySR(scale)
    x = image(n, h, w)
    y = tiled_forward(net, x, scale, 16, pad, "cpu", blend=blend)
    assert y.shape == (n, 3, h * scale, w * scale) and y.dtype == torch.float32 and y.device.type == "cpu"
    assert max_diff(y, untiled(net, x)) <= LEVEL


# 70×20 at tile 40: longer than a tile, but 1,400 pixels ≤ 40² fit one tile's budget.
@pytest.mark.parametrize(("tile", "h", "w"), [(0, 37, 29), (64, 37, 29), (40, 70, 20)])
def test_no_tiling_is_one_call_on_the_whole_image(tile, h, w):
    net = Recorder(TinySR(2))
    x = image(2, h, w)
    y = tiled_forward(net, x, 2, tile, 8, "cpu")
    assert [shape for shape, _ in net.seen] == [(2, 3, h, w)]
    assert max_diff(y, untiled(net.inner, x)) == 0


def to_levels(y: torch.Tensor) -> torch.Tensor:
    return y.clamp_(0, 1).mul_(255).round_()


@pytest.mark.parametrize(("tile", "h"), [(0, 37), (16, 37), (16, 33)])
def test_out_receives_the_finished_result(tile, h):
    # Into an 8-bit channels-last buffer, one finished run of rows at a time: the same
    # pixels as the float result finished afterwards.
    net = TinySR(2)
    x = image(2, h, 29)
    want = to_levels(tiled_forward(net, x, 2, tile, 2 * RADIUS, "cpu")).to(torch.uint8)
    buf = torch.full((2, 2 * h, 58, 3), 7, dtype=torch.uint8)
    got = tiled_forward(net, x, 2, tile, 2 * RADIUS, "cpu", out=buf.permute(0, 3, 1, 2), finish=to_levels)
    assert got.data_ptr() == buf.data_ptr()
    assert torch.equal(buf.permute(0, 3, 1, 2), want)
    assert max_diff(want.float() / 255, untiled(net, x).clamp(0, 1)) <= LEVEL


@pytest.mark.parametrize("tile", [0, 16])
def test_integer_levels_are_scaled_tile_by_tile(tile):
    net = TinySR(2)
    levels = (image(2, 37, 29) * 255).round().to(torch.uint8)
    want = tiled_forward(net, levels.float() / 255, 2, tile, 2 * RADIUS, "cpu")
    got = tiled_forward(net, levels, 2, tile, 2 * RADIUS, "cpu", peak=255)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_without_context_the_seams_show():
    # The comparison above can fail: with no context every tile border is wrong.
    net = TinySR(2)
    x = image(2, 37, 29)
    ref = untiled(net, x)
    assert max_diff(tiled_forward(net, x, 2, 16, 0, "cpu"), ref) > 5 * LEVEL
    # Short of exact (pad // 2 < RADIUS), feathering keeps the error below a grey level.
    assert max_diff(tiled_forward(net, x, 2, 16, RADIUS + 2, "cpu"), ref) <= LEVEL


def _largest_step(err: torch.Tensor) -> float:
    """Largest jump in the error between neighbouring pixels, after averaging the error
    along each row and column: a seam is a line, so this is what makes it visible."""
    cols, rows = err.mean(dim=(0, 1, 2)), err.mean(dim=(0, 1, 3))
    return max(cols.diff().abs().max().item(), rows.diff().abs().max().item())


def test_feathering_turns_seam_steps_into_ramps():
    scale, pad = 2, 8
    net = GlobalTone(scale)
    # A left-to-right brightness ramp: every tile has a different mean.
    x = image(1, 48, 64) * 0.3 + torch.linspace(0, 0.7, 64)
    ref = untiled(net, x)
    crop_step = _largest_step(tiled_forward(net, x, scale, 16, pad, "cpu", blend="crop") - ref)
    feather_step = _largest_step(tiled_forward(net, x, scale, 16, pad, "cpu", blend="feather") - ref)
    assert crop_step > 5 * LEVEL  # a visible line at every seam
    # The step is spread over a band of 2·(pad // 2)·scale = 16 output pixels.
    assert feather_step < crop_step / 8


def test_device_tiles_never_exceed_padded_tile():
    tile, pad = 16, 4
    net = Recorder(TinySR(2))
    x = image(2, 37, 29)
    tiled_forward(net, x, 2, tile, pad, torch.device("cpu"))
    assert len(net.seen) == 3 * 2  # rows 0, 16, 21 (shifted back); columns 0, 13 (shifted back)
    for (n, c, h, w), device in net.seen:
        assert (n, c) == (2, 3) and device.type == "cpu"
        assert h <= tile + 2 * pad and w <= tile + 2 * pad
        assert h * w <= (tile + 2 * pad) ** 2
    assert x.device.type == "cpu"


def test_rejects_fractional_scale_and_wrong_output_size():
    x = image(1, 40, 40)
    with pytest.raises(ValueError, match="integer scale"):
        tiled_forward(nn.Identity(), x, 1.5, 16, 4, "cpu")
    with pytest.raises(ValueError, match="expected"):
        tiled_forward(TinySR(2), x, 4, 16, 4, "cpu")  # the module only doubles


# ---------------------------------------------------------------------------------------
# run_with_backoff


class FakeOOM(Exception):
    pass


def limited(net: nn.Module, max_batch: int, max_tile: int, calls: list):
    """fn for run_with_backoff that 'runs out of memory' above a batch or tile size."""

    def fn(batch: torch.Tensor, tile: int) -> torch.Tensor:
        calls.append((batch.shape[0], tile))
        if batch.shape[0] > max_batch or tile == 0 or tile > max_tile:
            raise FakeOOM(f"batch {batch.shape[0]}, tile {tile}")
        return tiled_forward(net, batch, 2, tile, 2 * RADIUS, "cpu")

    return fn


def test_backoff_halves_batch_then_tile():
    net = TinySR(2)
    x = image(5, 70, 60)
    calls: list = []
    y, settings = run_with_backoff(limited(net, 2, 64, calls), x, tile=0, oom_errors=(FakeOOM,))
    assert max_diff(y, untiled(net, x)) <= LEVEL
    assert settings == BackoffSettings(batch_size=1, tile=64)
    # 512, 256 and 128 are skipped: each would be one tile covering the 70-pixel image.
    assert calls == [(5, 0), (3, 0), (2, 0), (1, 0), (1, 64), (1, 64), (1, 64), (1, 64), (1, 64)]


def test_backoff_keeps_the_smaller_batch_for_the_rest():
    net = TinySR(2)
    x = image(5, 20, 20)
    calls: list = []
    y, settings = run_with_backoff(limited(net, 2, 64, calls), x, tile=32, oom_errors=(FakeOOM,))
    assert max_diff(y, untiled(net, x)) <= LEVEL
    assert settings == BackoffSettings(batch_size=2, tile=32)
    assert calls == [(5, 32), (3, 32), (2, 32), (2, 32), (1, 32)]


def test_backoff_reraises_when_min_tile_fails():
    calls: list = []

    def always_oom(batch, tile):
        calls.append((batch.shape[0], tile))
        raise FakeOOM("still too big")

    with pytest.raises(FakeOOM, match="still too big"):
        run_with_backoff(always_oom, image(2, 100, 90), tile=0, min_tile=32, oom_errors=(FakeOOM,))
    assert calls == [(2, 0), (1, 0), (1, 64), (1, 32)]


def test_backoff_lets_other_errors_through():
    calls: list = []

    def broken(batch, tile):
        calls.append(batch.shape[0])
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        run_with_backoff(broken, image(4, 20, 20), tile=0, oom_errors=(FakeOOM,))
    assert calls == [4]


def test_real_oom_errors_recognised_and_cache_emptied(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    errors = [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
    ]

    def fn(batch, tile):
        if errors:
            raise errors.pop(0)
        return batch * 2

    x = image(2, 100, 90)
    y, settings = run_with_backoff(fn, x, tile=0)
    assert torch.equal(y, x * 2)
    assert settings == BackoffSettings(batch_size=1, tile=64)
    assert len(emptied) == 2
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.parametrize(
    ("tile", "size", "expected"),
    [(0, 3000, 512), (0, 300, 256), (100, 3000, 50), (50, 3000, 32), (32, 3000, None), (0, 20, None), (4096, 300, 256)],
)
def test_smaller_tile(tile, size, expected):
    assert tiling.smaller_tile(tile, size, size, start_tile=512, min_tile=32) == expected


def test_smaller_tile_counts_pixels_not_the_longer_side():
    # 2000×100 = 200,000 pixels: runs whole at tile 512 (262,144 pixels), so the first tile
    # that splits it is 256, though 512 is shorter than its longer side.
    assert tiling.runs_whole(100, 2000, 512) and not tiling.runs_whole(100, 2000, 256)
    assert tiling.smaller_tile(0, 100, 2000, start_tile=512, min_tile=32) == 256
    assert tiling.smaller_tile(512, 100, 2000, start_tile=512, min_tile=32) == 256


# ---------------------------------------------------------------------------------------
# Context per model: receptive fields, and every shipped model tiled at its own pad


class Unshuffled(nn.Module):
    """Works on a 2×2 pixel-unshuffled grid, then one stride-2 convolution deeper (as
    darkroom-denoise and darkroom-inpaint do): 4 input pixels per cell at the coarsest layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(12, 8, 3, 1, 1)
        self.down = nn.Conv2d(8, 8, 3, 2, 1)
        self.tail = nn.Conv2d(8, 12, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")  # any size, as darkroom-denoise
        y = self.head(F.pixel_unshuffle(xp, 2))
        y = F.interpolate(self.down(y), scale_factor=2, mode="nearest")
        return x + F.pixel_shuffle(self.tail(y), 2)[..., :h, :w]


def test_receptive_field_from_the_network():
    assert tiling.receptive_field(TinySR(2), 3) == tiling.ReceptiveField(RADIUS, 1)
    assert tiling.ReceptiveField(RADIUS, 1).feather_pad == 2 * RADIUS
    # head: 1 cell of 2 px; down: 1 cell of 2 px; tail (after the upsample): 1 cell of 2 px.
    field = tiling.receptive_field(Unshuffled(), 3)
    assert field == tiling.ReceptiveField(6, 4) and field.feather_pad == 12


def test_tiles_start_on_the_networks_grid():
    net = Unshuffled()
    x = image(1, 53, 61)  # odd sizes: the last tile, shifted back, would start off the grid
    ref = untiled(net, x)
    field = tiling.receptive_field(net, 3)
    assert max_diff(tiled_forward(net, x, 1, 16, field.feather_pad, "cpu", align=field.align), ref) <= 1e-6
    assert max_diff(tiled_forward(net, x, 1, 16, field.feather_pad, "cpu"), ref) > 5 * LEVEL


def _photo_crop(h: int, w: int) -> torch.Tensor:
    """1×3×h×w in [0, 1]: a crop of scikit-image's astronaut photo (512×512)."""
    from skimage import data

    pixels = data.astronaut()[40 : 40 + h, 60 : 60 + w]
    assert pixels.shape == (h, w, 3)
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 255


# RRDBNet is slow on CPU (realesrgan-x4plus: ~2 s per 1,000 input pixels on one thread): slow suite.
_SLOW = pytest.mark.slow


@pytest.mark.parametrize("tile", [96, 128])
@pytest.mark.parametrize(
    "name",
    [
        "realesr-animevideov3",
        "darkroom-sr-x4",
        "darkroom-denoise",
        "darkroom-colorize",
        pytest.param("realesrgan-x4plus-anime", marks=_SLOW),
        pytest.param("realesrgan-x4plus", marks=_SLOW),
    ],
)
def test_shipped_models_tile_invisibly_at_their_own_pad(name, tile):
    torch.set_num_threads(2)
    model = default_registry().build(name)
    pad, align = model.tile_context()
    # A strip (one row of tiles; rows are cut by the same code as columns, tested on TinySR above)
    # of odd size, wide enough that a seam lies a full pad away from both image borders, and with
    # just more pixels than tile² so that it is tiled at all.
    w = tile + 2 * pad + 37
    h = tile * tile // w + 9
    assert not tiling.runs_whole(h, w, tile)
    x = _photo_crop(h, w)
    with torch.no_grad():
        ref = model.module(x).clamp(0, 1)
        got = tiled_forward(model.module, x, int(model.scale), tile, pad, "cpu", align=align).clamp(0, 1)
    diff = max_diff(got, ref)
    print(f"{name}: tile {tile}, tile_pad {pad}, align {align}, {w}×{h}: max diff {diff * 255:.3f} levels")
    assert diff <= LEVEL
