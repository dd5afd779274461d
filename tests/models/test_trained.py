"""darkroom's own trained models: shipped weights, sha256 pins, forward pass, and a quality floor.

The quality checks use crops of held-out images (never used in training, see
models/training/common.py) and margins that neither an untrained network nor the baselines
themselves reach.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import default_registry
from models.resample import resize
from models.training.common import HELD_OUT, TRAIN_IMAGES, quantize, sample_image
from models.weights import WeightsError, fetch, file_sha256, load_state_dict, package_file

TRAINED = ("darkroom-sr-x4", "darkroom-denoise", "darkroom-colorize", "darkroom-inpaint")


def _psnr(a: torch.Tensor, b: torch.Tensor, shave: int = 0) -> float:
    if shave:
        a, b = a[..., shave:-shave, shave:-shave], b[..., shave:-shave, shave:-shave]
    return float(10 * torch.log10(1 / torch.mean((a.double() - b.double()) ** 2)))


def _crop(name: str, top: int, left: int, size: int) -> torch.Tensor:
    img = sample_image(name)[top : top + size, left : left + size]
    return quantize(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_held_out_images_are_not_training_images():
    assert not set(HELD_OUT) & set(TRAIN_IMAGES)


@pytest.mark.parametrize("name", TRAINED)
def test_shipped_weights_match_their_pin(name):
    spec = default_registry().get(name).weights
    assert spec.uri.startswith("package://models/weights/") and spec.uri.endswith(".safetensors")
    assert spec.format == "safetensors" and spec.licence.startswith("MIT (trained by darkroom")
    path = package_file(spec.uri)
    assert file_sha256(path) == spec.sha256
    assert path.stat().st_size < 30e6
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch(spec.uri, "0" * 64)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["model"] == name and int(meta["steps"]) > 0 and "astronaut" not in meta["data"]
    assert set(load_state_dict(path)) == set(default_registry().build(name).module.state_dict())


@pytest.mark.parametrize("name", TRAINED)
def test_forward_shape_and_range(name):
    model = default_registry().build(name)
    assert model.weights_sha256 == default_registry().get(name).weights.sha256
    assert model.needs_mask == default_registry().get(name).needs_mask == (name == "darkroom-inpaint")
    x = torch.rand(2, 3, 13, 11)
    if model.needs_mask:
        x = torch.cat([x, (torch.rand(2, 1, 13, 11) > 0.3).float()], dim=1)
    with torch.inference_mode():
        y = model.module(x)
    assert y.shape == (2, 3, *model.output_size(13, 11))
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_sr_beats_bicubic_on_a_held_out_crop():
    hr = _crop("astronaut", 64, 160, 128)  # the face and helmet
    lr = quantize(resize(hr, 32, 32, "bicubic"))
    reg = default_registry()
    with torch.inference_mode():
        ours = quantize(reg.build("darkroom-sr-x4").module(lr))
        bicubic = quantize(reg.build("bicubic", {"scale": 4}).module(lr))
    gain = _psnr(ours, hr, shave=4) - _psnr(bicubic, hr, shave=4)
    assert gain > SR_MIN_GAIN_DB, f"darkroom-sr-x4 only {gain:+.2f} dB over bicubic"


def test_denoiser_removes_most_of_the_noise_on_a_held_out_crop():
    clean = _crop("coffee", 100, 200, 128)
    gen = torch.Generator().manual_seed(0)
    noisy = clean + (25 / 255) * torch.randn(clean.shape, generator=gen)
    with torch.inference_mode():
        out = quantize(default_registry().build("darkroom-denoise").module(noisy))
    gain = _psnr(out, clean) - _psnr(noisy, clean)
    assert gain > DN_MIN_GAIN_DB, f"darkroom-denoise only {gain:+.2f} dB over the noisy input"


def test_untrained_networks_fail_the_quality_floor():
    """The margins above are not met by chance: freshly initialised networks stay far below them."""
    from models.darkroom_denoise import DarkroomDenoise
    from models.darkroom_sr import DarkroomSR

    torch.manual_seed(0)
    hr = _crop("astronaut", 64, 160, 128)
    lr = quantize(resize(hr, 32, 32, "bicubic"))
    clean = _crop("coffee", 100, 200, 128)
    noisy = clean + (25 / 255) * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        sr = quantize(DarkroomSR().eval()(lr))
        bicubic = quantize(default_registry().build("bicubic", {"scale": 4}).module(lr))
        dn = quantize(DarkroomDenoise().eval()(noisy))
    assert _psnr(sr, hr, shave=4) - _psnr(bicubic, hr, shave=4) < SR_MIN_GAIN_DB
    assert _psnr(dn, clean) - _psnr(noisy, clean) < DN_MIN_GAIN_DB


SR_MIN_GAIN_DB = 0.8  # trained: +1.56 dB on this crop; untrained (bicubic-like start): +0.20 dB
DN_MIN_GAIN_DB = 10.0  # trained: +12.27 dB on this crop; untrained (identity start): +0.73 dB


def _gray(rgb: torch.Tensor) -> torch.Tensor:
    """N×3×H×W → three equal channels of the rounded BT.601 luma (an 8-bit gray file)."""
    y = quantize((rgb * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(dim=1, keepdim=True))
    return y.expand(-1, 3, -1, -1)


def _hole_crop() -> tuple[torch.Tensor, torch.Tensor]:
    from models.training.train_inpaint import hole_mask

    clean = _crop("coffee", 100, 150, 128)  # cup, saucer and spoon: edges running through holes
    holes = hole_mask(torch.Generator().manual_seed(3), 128, 128, coverage=(0.15, 0.15))
    return clean, (~holes).float()[None, None]


def test_colorize_beats_the_gray_image_on_a_held_out_crop():
    ref = _crop("coffee", 100, 150, 128)  # the red cup and saucer
    gray = _gray(ref)
    with torch.inference_mode():
        out = quantize(default_registry().build("darkroom-colorize").module(gray))
    gain = _psnr(out, ref) - _psnr(gray, ref)
    assert gain > CZ_MIN_GAIN_DB, f"darkroom-colorize only {gain:+.2f} dB over the gray image"
    # Luminance is kept: re-graying the output gives the input back (up to rounding and clipping).
    assert (_gray(out) - gray).abs().max() <= 4 / 255 and (_gray(out) - gray).abs().mean() < 0.1 / 255


def test_inpaint_keeps_known_pixels_and_beats_its_own_first_stage():
    from models.darkroom_inpaint import pushpull_fill

    clean, known = _hole_crop()
    damaged = torch.where(known > 0, clean, torch.rand(clean.shape, generator=torch.Generator().manual_seed(0)))
    with torch.inference_mode():
        out = default_registry().build("darkroom-inpaint").module(torch.cat([damaged, known], dim=1))
        plain = pushpull_fill(damaged, known)
    keep = known.expand_as(clean) > 0
    assert torch.equal(out[keep], damaged[keep])  # bit for bit
    holes = ~keep
    gain = _psnr(quantize(out)[holes], clean[holes]) - _psnr(quantize(plain)[holes], clean[holes])
    assert gain > IP_MIN_GAIN_DB, f"darkroom-inpaint only {gain:+.2f} dB over the push-pull fill in the holes"


def test_untrained_colorizer_and_inpainter_are_their_baselines():
    """The margins above measure training: untrained, the colorizer (a zero chroma curve) gives the
    gray image and the inpainter (its last layer at zero) its push-pull fill, so their gain is nil."""
    from models.darkroom_colorize import DarkroomColorize
    from models.darkroom_inpaint import DarkroomInpaint, pushpull_fill

    torch.manual_seed(0)
    ref = _crop("coffee", 100, 150, 128)
    clean, known = _hole_crop()
    with torch.inference_mode():
        colour = quantize(DarkroomColorize().eval()(_gray(ref)))
        filled = DarkroomInpaint().eval()(torch.cat([clean, known], dim=1))
    assert (colour - _gray(ref)).abs().max() <= 1 / 255
    assert torch.allclose(filled, pushpull_fill(clean, known), atol=1e-6)


CZ_MIN_GAIN_DB = 1.0  # fitted: +2.07 dB on this crop; unfitted: 0 (it is the gray image)
IP_MIN_GAIN_DB = 1.0  # trained: +2.25 dB in the holes of this crop; untrained: 0 (it is the push-pull fill)
