"""The shipped digits classifier (scores generators in benchmarks/generation_quality.py): pinned
weights trained on the training split only, accuracy on the held-back digits, colour-blindness."""

from __future__ import annotations

import pytest
import torch

from models import digits_classifier
from models.training import digits
from tests.models.generation_checks import pinned_weights_metadata

HELD_BACK_ACCURACY_FLOOR = 0.95  # measured when trained: see the weights' metadata (held_back_accuracy)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net(one_torch_thread):
    return digits_classifier.build()


@pytest.fixture(scope="module")
def held_back():
    return digits.load(32)[1]


def test_shipped_weights_match_their_pin_and_name_their_data():
    meta = pinned_weights_metadata(digits_classifier.WEIGHTS, max_bytes=1e6)
    assert meta["model"] == digits_classifier.NAME and int(meta["steps"]) > 0
    assert "training digits" in meta["data"] and "held-back" in meta["held_out"]


def test_accuracy_on_held_back_digits(net, held_back):
    probs = digits_classifier.probabilities(net, held_back.coloured())
    assert probs.shape == (held_back.labels.numel(), 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(probs.shape[0]))
    accuracy = float((probs.argmax(1) == held_back.labels).float().mean())
    assert accuracy >= HELD_BACK_ACCURACY_FLOOR, accuracy


def test_reads_shape_not_colour(net, held_back):
    """The same strokes painted in another class's colour (or gray) get the same probabilities."""
    images, labels = held_back.images[:64], held_back.labels[:64]
    reference = digits_classifier.probabilities(net, digits.colourise(images, labels))
    for recoloured in (digits.colourise(images, (labels + 3) % 10), images, images.expand(-1, 3, -1, -1)):
        torch.testing.assert_close(digits_classifier.probabilities(net, recoloured), reference)


def test_not_confident_about_what_is_no_digit(net, held_back):
    """What a failed generator draws — noise, smooth blobs, two digits on top of each other — must
    not count as a recognisable digit (top probability > 0.9) in the generation benchmark."""
    gen = torch.Generator().manual_seed(5)
    noise = torch.rand(64, 3, 32, 32, generator=gen)
    blobs = torch.nn.functional.interpolate(
        torch.randn(64, 3, 5, 5, generator=gen), size=(32, 32), mode="bilinear"
    ).clamp(0, 1)
    first, second = held_back.coloured()[:64], held_back.coloured()[64:128]
    different = held_back.labels[:64] != held_back.labels[64:128]
    overlaid = (0.5 * first + 0.5 * second)[different]
    # Two coloured digits overlaid sometimes do read as one (a 1 inside a 7): measured 24 %.
    for name, images, most in (("noise", noise, 0.05), ("blobs", blobs, 0.05), ("two digits", overlaid, 0.35)):
        confident = float((digits_classifier.probabilities(net, images).max(1).values > 0.9).float().mean())
        assert confident <= most, (name, confident)
