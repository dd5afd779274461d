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

TRAINED = ("darkroom-sr-x4", "darkroom-denoise")


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
    x = torch.rand(2, 3, 13, 11)
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
DN_MIN_GAIN_DB = 6.0  # trained: +9.33 dB on this crop; untrained (identity start): +0.73 dB
