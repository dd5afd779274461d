"""darkroom-gan-digits: the shipped class-conditional DCGAN generator, its sampler and its training script.

Quality floors use two independent readings of a sample's class: its stroke hue (digits are
class-coloured, models/training/digits.py) and the shape-only digits classifier; an untrained
generator reaches neither (checked on a fresh network).
"""

from __future__ import annotations

import pytest
import torch

from models import default_registry, gan
from tests.models import generation_checks as checks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return default_registry().build(gan.NAME)


def test_registry_entry_and_shipped_weights():
    checks.check_registry_entry_and_shipped_weights(
        gan, gan.GANConfig(), "package://models/weights/darkroom-gan-digits.safetensors"
    )


def test_built_model(model):
    assert model.sampler == "gan" and model.weights_sha256 == gan.WEIGHTS.sha256
    assert not model.module.training  # BatchNorm on its fixed statistics
    checks.check_shape_and_range(model)


def test_sample_is_bit_identical_whatever_the_batching(model):
    checks.check_batch_invariance(model)


def test_class_drawn_from_the_samples_generator(model):
    checks.check_drawn_class_is_the_asked_class(model)


def test_bad_labels_refused(model):
    with pytest.raises(ValueError, match="outside"):
        model.sample(checks.gens([0]), [10], torch.device("cpu"))
    with pytest.raises(ValueError, match="labels"):
        model.sample(checks.gens([0, 1]), [1], torch.device("cpu"))


def test_labels_honoured_by_hue(model):
    checks.check_labels_honoured_by_hue(model, untrained=gan.sampler(gan.Generator().eval()))


def test_labels_honoured_by_the_digits_classifier(model):
    checks.check_labels_honoured_by_the_digits_classifier(model)


def test_training_script_writes_loadable_weights(tmp_path):
    from models.training import train_gan_digits

    train_gan_digits.main(["--steps", "2", "--batch", "4", "--recalibrate", "1", "--out", str(tmp_path)])
    checks.check_training_output(gan, tmp_path)


@pytest.mark.parametrize("minibatch_std", [False, True])
def test_discriminator_scores_each_image(minibatch_std):
    net = gan.Discriminator(gan.GANConfig(d_minibatch_std=minibatch_std))
    logits = net(torch.rand(4, 3, 32, 32), torch.tensor([0, 3, 5, 9]))
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_random_shift_moves_whole_images():
    from torch.nn import functional as F

    from models.training.train_gan_digits import random_shift

    x = torch.rand(16, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    assert random_shift(x, gen, 0) is x
    out = random_shift(x, gen, 2)
    padded = F.pad(x, (2, 2, 2, 2))
    shifts = []
    for i in range(16):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out[i], padded[i, :, 2 + dy : 10 + dy, 2 + dx : 10 + dx])
        ]
        assert len(found) == 1
        shifts.append(found[0])
    assert (0, 0) in shifts and any(s != (0, 0) for s in shifts)  # about half the rows move
