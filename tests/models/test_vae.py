"""darkroom-vae-digits: the shipped class-conditional VAE, its sampler and its training script.

Quality floors: samples of class c show class c (stroke hue, and the shape-only digits
classifier); held-back digits, never trained on, are reconstructed far better than by the mean
training digit of their class.
"""

from __future__ import annotations

import pytest
import torch

from models import default_registry, vae
from models.training import digits
from tests.models import generation_checks as checks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return default_registry().build(vae.NAME)


def test_registry_entry_and_shipped_weights():
    checks.check_registry_entry_and_shipped_weights(
        vae, vae.VAEConfig(), "package://models/weights/darkroom-vae-digits.safetensors"
    )


def test_built_model(model):
    assert model.sampler == "vae" and model.weights_sha256 == vae.WEIGHTS.sha256
    checks.check_shape_and_range(model)


def test_sample_is_bit_identical_whatever_the_batching(model):
    checks.check_batch_invariance(model)


def test_class_drawn_from_the_samples_generator(model):
    checks.check_drawn_class_is_the_asked_class(model)


def test_generation_is_the_decoder_on_the_samples_latent_at_the_temperature(model):
    z = torch.randn(model.module.cfg.latent_dim, generator=checks.gens([3])[0])
    for temperature in (None, 1.0, 0.3):
        built = model if temperature is None else default_registry().build(vae.NAME, {"temperature": temperature})
        t = vae.LatentParams().temperature if temperature is None else temperature
        expected = model.module.decode(t * z[None], torch.tensor([7]))
        assert torch.allclose(built.sample(checks.gens([3]), [7], torch.device("cpu")), expected, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        default_registry().get(vae.NAME).validate_params({"temperature": 0})


def test_labels_honoured_by_hue(model):
    checks.check_labels_honoured_by_hue(model, untrained=vae.sampler(vae.VAE().eval()))


def test_labels_honoured_by_the_digits_classifier(model):
    checks.check_labels_honoured_by_the_digits_classifier(model)


def test_held_back_digits_reconstructed(model):
    train, held = digits.load(32)
    x, y = held.coloured(), held.labels
    with torch.no_grad():
        mean, _ = model.module.encode(x, y)
        recon = model.module.decode(mean, y)
    class_means = torch.stack([train.coloured()[train.labels == c].mean(0) for c in range(10)])
    vae_mse = torch.mean((recon - x) ** 2)
    baseline_mse = torch.mean((class_means[y] - x) ** 2)
    assert vae_mse < 0.5 * baseline_mse, (float(vae_mse), float(baseline_mse))


def test_training_script_writes_loadable_weights(tmp_path):
    from models.training import train_vae_digits

    train_vae_digits.main(["--steps", "2", "--batch", "4", "--out", str(tmp_path)])
    checks.check_training_output(vae, tmp_path)
