"""The model actor on a real local Ray: outputs above ``Encoding.above`` come back as files."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from models import default_registry
from pipeline import execute, images, outputs
from pipeline.job import Resources


@pytest.fixture
def bicubic_x2(ray_local):
    actor = execute.ModelActor.remote(
        default_registry(),
        [{"model": "bicubic", "params": {"scale": 2}}],
        Resources(cpus_per_actor=0.5, threads_per_actor=1),
        False,
    )
    yield actor
    ray.kill(actor)


def _image(h: int, w: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_outputs_above_the_threshold_come_back_encoded_like_the_shard_task_would(bicubic_x2):
    small, big = _image(8, 8, 3, 0), _image(30, 20, 3, 1)
    alpha = _image(30, 20, 1, 2)[..., 0]
    above = 16 * 16 * 3  # the small image's output: not above, so it comes back as pixels
    encodings = [
        execute.Encoding("png", 95, above, "PNG"),
        execute.Encoding("same", 90, above, "JPEG"),  # the big one without alpha: `same` follows the input
    ]
    [kept, jpeg] = ray.get(bicubic_x2.infer.remote([small, big], encodings))
    [as_png] = ray.get(bicubic_x2.infer.remote([big], [execute.Encoding("jpeg", 90, above, "JPEG", alpha)]))
    [plain] = ray.get(bicubic_x2.infer.remote([big]))  # no encodings: pixels, as before

    assert kept.encoded is None and kept.pixels.shape == (16, 16, 3)
    assert plain.encoded is None and plain.pixels.shape == (60, 40, 3)
    assert jpeg.pixels is None and (jpeg.encoded.format, jpeg.encoded.width, jpeg.encoded.height) == ("jpeg", 40, 60)
    assert jpeg.encoded.data == outputs.encode_output(plain.pixels, None, "same", "JPEG", 90).data
    # The alpha plane is resized and re-attached in the actor; JPEG cannot hold it, so PNG.
    assert as_png.encoded.format == "png"
    assert as_png.encoded.data == outputs.encode_output(plain.pixels, alpha, "jpeg", "JPEG", 90).data
    decoded = images.decode(as_png.encoded.data, 10**6)
    assert decoded.mode == "RGBA" and np.array_equal(decoded.pixels, plain.pixels)


def test_an_output_the_actor_cannot_encode_is_an_encode_error(bicubic_x2):
    wide = _image(1, 8200, 3, 3)  # ×2 → 16400 pixels wide: over WebP's 16383
    [result] = ray.get(bicubic_x2.infer.remote([wide], [execute.Encoding("webp", 90, 0, "PNG")]))
    assert (result.pixels, result.encoded, result.stage) == (None, None, "encode")
    assert result.error_type == "ValueError" and "WebP" in result.error
