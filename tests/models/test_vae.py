"""darkroom-vae-digits: the shipped class-conditional VAE, its sampler and its training script.

Quality floors: samples of class c show class c (stroke hue, and the shape-only digits
classifier); held-back digits, never trained on, are reconstructed far better than by the mean
training digit of their class.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from models import default_registry, digits_classifier, vae
from models.base import WeightsSpec
from models.training import digits
from models.weights import WeightsError, fetch, file_sha256, package_file
from tests.models import generation_checks as checks


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return default_registry().build(vae.NAME)


def test_registry_entry_and_shipped_weights():
    entry = default_registry().get(vae.NAME)
    assert entry.task == "generation" and entry.num_classes == 10 and entry.weights == vae.WEIGHTS
    spec = entry.weights
    assert spec.uri == "package://models/weights/darkroom-vae-digits.safetensors" and spec.format == "safetensors"
    path = package_file(spec.uri)
    assert file_sha256(path) == spec.sha256 and path.stat().st_size < 3e6
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch(spec.uri, "0" * 64)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["model"] == vae.NAME and int(meta["steps"]) > 0 and "load_digits" in meta["data"]
    assert {k: v for k, v in meta.items() if k.startswith("config.")} == vae.VAEConfig().as_metadata()


def test_built_model(model):
    assert model.sampler == "vae" and model.weights_sha256 == vae.WEIGHTS.sha256
    checks.check_shape_and_range(model)


def test_sample_is_bit_identical_whatever_the_batching(model):
    checks.check_batch_invariance(model)


def test_class_drawn_from_the_samples_generator(model):
    checks.check_drawn_class_is_the_asked_class(model)


def test_generation_is_the_decoder_on_the_samples_latent(model):
    gen = checks.gens([3])[0]
    z = torch.randn(model.module.cfg.latent_dim, generator=checks.gens([3])[0])
    expected = model.module.decode(z[None], torch.tensor([7]))
    assert torch.allclose(model.sample([gen], [7], torch.device("cpu")), expected, atol=1e-6)


def test_labels_honoured_by_hue(model):
    images, labels = checks.class_samples(model, per_class=10)
    assert (checks.hue_classes(images) == labels).float().mean() >= 0.95
    untrained = vae.VAE().eval()
    random_images = vae.sampler(untrained)(checks.gens(range(100), 11), labels.tolist(), torch.device("cpu"))
    assert (checks.hue_classes(random_images) == labels).float().mean() < 0.5


def test_labels_honoured_by_the_digits_classifier(model):
    classifier = digits_classifier.build()
    images, labels = checks.class_samples(model, per_class=20)
    probs = digits_classifier.probabilities(classifier, images)
    assert (probs.argmax(dim=1) == labels).float().mean() >= 0.8


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
    path = tmp_path / f"{vae.NAME}.safetensors"
    assert {p.name for p in tmp_path.glob("*.png")} == {f"{vae.NAME}-step1.png", f"{vae.NAME}-step2.png"}
    assert (tmp_path / "loss.csv").is_file() and (tmp_path / "train.json").is_file()
    built = vae.build(WeightsSpec(uri=str(path), sha256=file_sha256(path), format="safetensors", scale=1, licence=vae.LICENCE))
    assert built.sample(checks.gens([0, 1]), [0, 9], torch.device("cpu")).shape == (2, 3, 32, 32)
