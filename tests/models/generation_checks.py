"""Checks shared by test_gan.py and test_vae.py: contract of a class-conditional GenerativeModel
of 32×32 class-coloured digits, its shipped weights and its training script's output, and two
independent ways to tell which class a sample shows. ``gens`` serves test_ddpm_generation.py
too, ``pinned_weights_metadata`` test_digits_classifier.py."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open

from models import default_registry, digits_classifier
from models.base import GenerativeModel, SampleFn
from models.diffusion import sample_generator
from models.latent import draw_latents
from models.training.digits import PALETTE, shape_channel
from models.weights import WeightsError, WeightsSpec, fetch, file_sha256, package_file


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


def pinned_weights_metadata(spec: WeightsSpec, max_bytes: float) -> dict[str, str]:
    """The safetensors metadata of ``spec``'s packaged file, once checked that the file matches
    its sha256 pin, is smaller than ``max_bytes``, and is refused under any other digest."""
    path = package_file(spec.uri)
    assert file_sha256(path) == spec.sha256 and path.stat().st_size < max_bytes
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch(spec.uri, "0" * 64)
    with safe_open(str(path), "pt") as fh:
        return fh.metadata()


def check_registry_entry_and_shipped_weights(module: ModuleType, config, uri: str) -> None:
    """``module`` (models.gan, models.vae) is a 10-class generation entry whose pinned weights
    file lives at ``uri``, is sha256-checked, and names in its metadata the model, its training
    on scikit-learn's digits and ``config`` (the module's default config)."""
    entry = default_registry().get(module.NAME)
    assert entry.task == "generation" and entry.num_classes == 10 and entry.weights == module.WEIGHTS
    spec = entry.weights
    assert spec.uri == uri and spec.format == "safetensors"
    meta = pinned_weights_metadata(spec, max_bytes=3e6)
    assert meta["model"] == module.NAME and int(meta["steps"]) > 0 and "load_digits" in meta["data"]
    assert {k: v for k, v in meta.items() if k.startswith("config.")} == config.as_metadata()


def check_labels_honoured_by_hue(model: GenerativeModel, untrained: SampleFn) -> None:
    """≥ 95 % of 100 samples (10 a class) show their class's hue; ``untrained`` (the same
    sampler on a fresh network) scores < 50 % on the same generators and labels."""
    images, labels = class_samples(model, per_class=10)
    assert (hue_classes(images) == labels).float().mean() >= 0.95
    random_images = untrained(gens(range(100), 11), labels.tolist(), torch.device("cpu"))
    assert (hue_classes(random_images) == labels).float().mean() < 0.5


def check_labels_honoured_by_the_digits_classifier(model: GenerativeModel) -> None:
    """The shape-only digits classifier reads the asked class in ≥ 80 % of 200 samples."""
    classifier = digits_classifier.build()
    images, labels = class_samples(model, per_class=20)
    probs = digits_classifier.probabilities(classifier, images)
    assert (probs.argmax(dim=1) == labels).float().mean() >= 0.8


def check_training_output(module: ModuleType, out: Path) -> None:
    """What ``module``'s training script wrote into ``out`` after 2 steps: an image a step,
    loss.csv, train.json, and weights that ``module.build`` loads into a model that samples."""
    path = out / f"{module.NAME}.safetensors"
    assert {p.name for p in out.glob("*.png")} == {f"{module.NAME}-step1.png", f"{module.NAME}-step2.png"}
    assert (out / "loss.csv").is_file() and (out / "train.json").is_file()
    built = module.build(
        spec=WeightsSpec(uri=str(path), sha256=file_sha256(path), format="safetensors", scale=1, licence=module.LICENCE)
    )
    assert built.sample(gens([0, 1]), [0, 9], torch.device("cpu")).shape == (2, 3, 32, 32)
