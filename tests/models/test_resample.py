import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from models.resample import Resample, resize


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)[None]


@pytest.mark.parametrize(
    ("kernel", "pil"), [("bicubic", Image.Resampling.BICUBIC), ("lanczos", Image.Resampling.LANCZOS)]
)
@pytest.mark.parametrize("size", [(40, 56), (9, 13)])  # up and down
def test_matches_pillow(kernel, pil, size):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(1)))
    ours = resize(to_tensor(arr), *size, kernel).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
    theirs = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), pil)).astype(np.float32)
    # Pillow rounds to 8 bits between its two passes; mean within ~half a level is the same resampler.
    assert np.abs(ours - theirs).mean() < 0.6
    assert np.abs(ours - theirs).max() < 4


def test_constant_image_stays_constant():
    x = torch.full((1, 3, 7, 9), 0.25)
    y = Resample(3.3, "lanczos")(x)
    assert y.shape == (1, 3, 23, 30)
    assert torch.allclose(y, torch.full_like(y, 0.25), atol=1e-6)


def test_large_axis_uses_small_tables():
    # 6000 → 24000 pixels along one axis: gather tables, not a 24000×6000 dense matrix.
    x = torch.rand(1, 1, 1, 6000)
    y = resize(x, 1, 24000, "bicubic")
    assert y.shape == (1, 1, 1, 24000)
