"""Checks shared by test_gan.py and test_vae.py: contract of a class-conditional GenerativeModel
of 32×32 class-coloured digits, and two independent ways to tell which class a sample shows."""

from __future__ import annotations

import torch

from models.base import GenerativeModel
from models.diffusion import sample_generator
from models.latent import draw_latents
from models.training.digits import PALETTE, shape_channel


def gens(indices, seed: int = 7) -> list[torch.Generator]:
    return [sample_generator(seed, i) for i in indices]


def check_shape_and_range(model: GenerativeModel) -> None:
    x = model.sample(gens(range(6)), None, torch.device("cpu"))
    assert x.dtype == torch.float32 and x.shape == (6, *model.shape) == (6, 3, 32, 32)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert x.amax() > 0.9 and x.amin() < 0.05  # bright strokes on black, not a grey mush
    assert all(not torch.equal(x[0], x[i]) for i in range(1, 6))  # different indices, different samples
    assert model.steps == 1 and model.num_classes == 10


def check_batch_invariance(model: GenerativeModel) -> None:
    """Sample i is bit-identical alone, in a batch of 5, and in another order and mix."""
    device = torch.device("cpu")
    for labels in (None, [3, 1, 4, 1, 5]):
        whole = model.sample(gens(range(5)), labels, device)
        for i in range(5):
            alone = model.sample(gens([i]), None if labels is None else [labels[i]], device)
            assert torch.equal(alone[0], whole[i]), f"sample {i} changed with its batch (labels {labels})"
        order = [4, 0, 2]
        mixed = model.sample(gens(order), None if labels is None else [labels[i] for i in order], device)
        assert all(torch.equal(mixed[k], whole[i]) for k, i in enumerate(order))


def check_drawn_class_is_the_asked_class(model: GenerativeModel) -> None:
    """Without labels each sample's class comes from its own generator; asking for that class
    gives the same image (z is drawn first)."""
    _, drawn = draw_latents(gens(range(8)), None, model.module.cfg.latent_dim, 10)
    assert drawn.unique().numel() > 1
    device = torch.device("cpu")
    assert torch.equal(model.sample(gens(range(8)), None, device), model.sample(gens(range(8)), drawn.tolist(), device))


def hue_classes(images: torch.Tensor) -> torch.Tensor:
    """int64 (N,): the palette entry nearest each sample's mean stroke colour (pixels whose
    max channel > 0.5), normalised to max component 1 as the palette is."""
    mask = shape_channel(images) > 0.5
    colour = (images * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp(min=1)
    colour = colour / colour.amax(dim=1, keepdim=True).clamp(min=1e-6)
    return torch.cdist(colour, PALETTE).argmin(dim=1)


def class_samples(model: GenerativeModel, per_class: int, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N×3×32×32, labels (N,)) with ``per_class`` samples of every class."""
    labels = torch.arange(10).repeat_interleave(per_class)
    return model.sample(gens(range(len(labels)), seed), labels.tolist(), torch.device("cpu")), labels
