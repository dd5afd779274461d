import numpy as np
import torch

from models import ImageModel, default_registry
from pipeline.inference import Chain, resize_plane


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
