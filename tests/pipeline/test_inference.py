from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import ImageModel, default_registry
from pipeline.inference import (
    PRECISIONS,
    Chain,
    batch_stream,
    model_dtype,
    pinned_empty,
    resize_plane,
    to_device,
    to_host,
)

REPO = Path(__file__).resolve().parents[2]


def chain(*names, batch_size=4, registry=None):
    reg = registry or default_registry()
    return Chain(
        [reg.build(n, {"scale": 2} if n in ("bicubic", "lanczos") else {}) for n in names],
        torch.device("cpu"),
        batch_size,
    )


def test_gray_stays_gray_and_sixteen_bit_stays_sixteen_bit():
    gray16 = np.arange(6 * 8, dtype=np.uint16).reshape(6, 8, 1) * 1000
    [out] = chain("bicubic")([gray16])
    assert out.pixels.shape == (12, 16, 1) and out.pixels.dtype == np.uint16


def test_identity_is_exact_for_8_and_16_bit():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    b = rng.integers(0, 65536, (5, 7, 1), dtype=np.uint16)
    out = chain("identity")([a, b])
    assert np.array_equal(out[0].pixels, a) and np.array_equal(out[1].pixels, b)


def test_steps_chain_in_order():
    img = np.zeros((4, 5, 3), np.uint8)
    [out] = chain("bicubic", "lanczos")([img])
    assert out.pixels.shape == (16, 20, 3)


class FailsOnBright(torch.nn.Module):
    def forward(self, x):
        if (x.amax(dim=(1, 2, 3)) > 0.9).any():
            raise RuntimeError("cannot handle bright images")
        return x


def test_a_failing_image_does_not_fail_its_batch():
    model = ImageModel("fussy", FailsOnBright(), 1, 3, False)
    imgs = [np.zeros((3, 3, 3), np.uint8), np.full((3, 3, 3), 255, np.uint8), np.zeros((3, 3, 3), np.uint8)]
    out = Chain([model], torch.device("cpu"), batch_size=3)(imgs)
    assert [r.error is None for r in out] == [True, False, True]
    assert "cannot handle bright images" in out[1].error


def test_mixed_sizes_are_batched_separately_and_keep_order():
    imgs = [np.zeros((2, 2, 3), np.uint8), np.zeros((3, 5, 3), np.uint8), np.zeros((2, 2, 1), np.uint8)]
    out = chain("bicubic", batch_size=8)(imgs)
    assert [r.pixels.shape for r in out] == [(4, 4, 3), (6, 10, 3), (4, 4, 1)]


def test_resize_plane():
    alpha = np.full((3, 4), 200, np.uint8)
    out = resize_plane(alpha, 12, 16)
    assert out.shape == (12, 16) and out.dtype == np.uint8 and (out == 200).all()


def test_tiled_chain_matches_untiled_within_one_level():
    model = default_registry().build("realesr-animevideov3")
    img = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    [whole] = Chain([model], torch.device("cpu"), 1, tile=0)([img])
    [tiled] = Chain([model], torch.device("cpu"), 1, tile=24, tile_pad=24)([img])
    assert np.abs(whole.pixels.astype(int) - tiled.pixels.astype(int)).max() <= 1


class OomAboveBatchOne(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 110.00 GiB")
        return x


def test_out_of_memory_halves_the_batch_and_keeps_going():
    model = ImageModel("greedy", OomAboveBatchOne(), 1, 3, False)
    chain = Chain([model], torch.device("cpu"), batch_size=4)
    imgs = [np.full((3, 3, 3), i, np.uint8) for i in range(4)]
    out = chain(imgs)
    assert [r.error for r in out] == [None] * 4
    assert [int(r.pixels[0, 0, 0]) for r in out] == [0, 1, 2, 3]
    assert chain.batch_size == 1  # later batches start small


def test_last_model_writes_levels_straight_into_the_result():
    # An 8-bit result is written by the last model directly, tile row by tile row; with an
    # identity after it the same model goes through the float path: the pixels are the same.
    registry = default_registry()
    model = registry.build("darkroom-sr-x4")
    img = np.random.default_rng(2).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    [direct] = Chain([model], torch.device("cpu"), 1, tile=24, tile_pad=8)([img])
    [via_float] = Chain([model, registry.build("identity")], torch.device("cpu"), 1, tile=24, tile_pad=8)([img])
    assert direct.error is None and direct.pixels.shape == (160, 208, 3) and direct.pixels.dtype == np.uint8
    assert np.array_equal(direct.pixels, via_float.pixels)


# ---- precision and the GPU path ----

# A real photo, cropped small: CPU fp16/bf16 convolutions are slow (no native support here).
PHOTO = REPO / "samples" / "photos" / "astronaut.jpg"

# Measured on CPU (torch 2.14), 8-bit levels, bf16/fp16 output against fp32 of the same model:
#   realesr-animevideov3, 128×128 / 128×85 photos: bf16 max 3–5, PSNR 53.9–55.5 dB; fp16 max 1, PSNR ≥ 62.4 dB
#   darkroom-sr-x4, 64×64 crops of 4 photos:     bf16 max 2,   PSNR 52.7–54.0 dB; fp16 max 1, PSNR ≥ 61.9 dB
# The bounds below leave a margin over those: bf16 keeps 8 significant bits against fp16's 11.
TOLERANCE = {"bf16": (6, 50.0), "fp16": (2, 58.0)}  # (max abs diff in levels, min PSNR in dB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["realesr-animevideov3", "darkroom-sr-x4"])
def test_half_precision_output_is_within_the_stated_tolerance_of_fp32(name, precision):
    img = np.asarray(Image.open(PHOTO).convert("RGB"))[40:72, 48:80]  # 32×32, the face
    registry = default_registry()
    [ref] = Chain([registry.build(name)], torch.device("cpu"), 1, precision="fp32")([img])
    half = Chain([registry.build(name)], torch.device("cpu"), 1, precision=precision)
    [out] = half([img])
    assert half.dtypes == [PRECISIONS[precision]]
    diff = np.abs(out.pixels.astype(int) - ref.pixels.astype(int))
    worst, min_psnr = TOLERANCE[precision]
    assert 0 < diff.max() <= worst  # > 0: the model did run in the half format
    assert psnr(out.pixels, ref.pixels) >= min_psnr


def test_model_dtype_follows_precision_device_and_what_the_model_declares():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    sr = default_registry().build("darkroom-sr-x4")  # supports_half
    assert model_dtype(sr, "auto", cpu) == torch.float32
    assert model_dtype(sr, "auto", cuda) == torch.float16
    assert model_dtype(sr, "bf16", cpu) == torch.bfloat16 and model_dtype(sr, "fp32", cuda) == torch.float32
    overflows = ImageModel("fp16-overflows", torch.nn.Identity(), 1, 3, supports_half=False, supports_bfloat16=True)
    assert model_dtype(overflows, "fp16", cuda) == torch.float32
    assert model_dtype(overflows, "bf16", cuda) == torch.bfloat16
    # Identity and the resamplers stay fp32: a 16-bit image keeps every level.
    assert model_dtype(default_registry().build("identity"), "fp16", cuda) == torch.float32
    with pytest.raises(ValueError, match="precision"):
        model_dtype(sr, "fp8", cpu)


def test_sixteen_bit_identity_is_exact_whatever_the_precision():
    b = np.random.default_rng(3).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    for precision in ("fp16", "bf16"):
        [out] = Chain([default_registry().build("identity")], torch.device("cpu"), 2, precision=precision)([b])
        assert np.array_equal(out.pixels, b)


def test_host_device_transfers_are_no_ops_on_the_cpu():
    cpu = torch.device("cpu")
    x = torch.arange(24, dtype=torch.uint8).reshape(1, 2, 3, 4).permute(0, 3, 1, 2)
    assert to_device(x, cpu) is x and to_host(x) is x
    assert not pinned_empty((2, 3), torch.uint8, cpu).is_pinned()
    with batch_stream(cpu):  # a null context: nothing to wait for
        pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pinned memory, streams)")
def test_gpu_path_pins_copies_asynchronously_and_matches_cpu_fp32():
    cuda = torch.device("cuda")
    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.uint8).reshape(2, 5, 7, 3).permute(0, 3, 1, 2)
    assert pinned_empty((2, 3), torch.uint8, cuda).is_pinned()
    with batch_stream(cuda):
        on_device = to_device(x, cuda)  # from pageable memory: through a pinned staging copy
        back = to_host(on_device * 1)
    assert on_device.device.type == "cuda" and back.is_pinned() and torch.equal(back, x)
    img = np.asarray(Image.open(PHOTO).convert("RGB"))
    [ref] = chain("realesr-animevideov3", batch_size=2)([img])
    for precision in ("fp16", "bf16"):
        gpu = Chain([default_registry().build("realesr-animevideov3")], cuda, 2, precision=precision)
        outs = gpu([img, img])  # one batch of two: the pinned stack, one stream
        worst, min_psnr = TOLERANCE[precision]
        for out in outs:
            assert np.abs(out.pixels.astype(int) - ref.pixels.astype(int)).max() <= worst
            assert psnr(out.pixels, ref.pixels) >= min_psnr
