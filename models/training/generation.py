"""What train_gan_digits.py and train_vae_digits.py share: data provenance, sample grids, loss logs."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.nn import functional as F
from torchvision.utils import save_image

from models.base import SampleFn
from models.diffusion import sample_generator
from models.training import digits

GRID_SEED = 0  # column j of every grid is sample_generator(GRID_SEED, j)


def provenance(train: digits.Digits) -> dict[str, str]:
    """Weights metadata naming the training data (overrides models.training.common's defaults)."""
    size = train.images.shape[-1]
    return {
        "data": (
            f"scikit-learn load_digits, the {train.images.shape[0]} training digits of models/training/digits.py "
            f"(split seed {digits.SPLIT_SEED}), {size}x{size} bilinear, class-coloured (digits.PALETTE)"
        ),
        "held_out": f"the {digits.HELD_BACK} held-back digits of models/training/digits.py",
        "licence": "MIT (trained by darkroom on scikit-learn's digits)",
    }


def save_class_grid(sample: SampleFn, path: Path, num_classes: int = 10, columns: int = 10, zoom: int = 2) -> Path:
    """PNG grid of ``sample``'s output: row c is class c, column j uses the generator of index j
    (so a column shares its latent code across classes); pixels enlarged ``zoom``× (nearest)."""
    gens = [sample_generator(GRID_SEED, j) for _ in range(num_classes) for j in range(columns)]
    labels = [c for c in range(num_classes) for _ in range(columns)]
    images = sample(gens, labels, torch.device("cpu"))
    images = F.interpolate(images, scale_factor=zoom, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=columns, padding=2, pad_value=0.25)
    return path


class LossLog:
    """Running means of named losses over the last ``window`` steps, appended to a CSV every ``every`` steps."""

    def __init__(self, path: Path, names: list[str], every: int = 100, window: int = 100):
        self.path, self.names, self.every, self.window = path, names, every, window
        self.recent: dict[str, list[float]] = {n: [] for n in names}
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerow(["step", *names, "cpu_seconds"])

    def add(self, step: int, cpu_seconds: float, **values: float) -> None:
        for name, value in values.items():
            self.recent[name] = (self.recent[name] + [value])[-self.window :]
        if step % self.every == 0:
            row = self.means()
            with open(self.path, "a", newline="") as fh:
                csv.writer(fh).writerow([step, *(f"{row[n]:.5f}" for n in self.names), f"{cpu_seconds:.0f}"])
            print(
                f"step {step} " + " ".join(f"{n} {row[n]:.4f}" for n in self.names) + f" cpu {cpu_seconds:.0f}s",
                flush=True,
            )

    def means(self) -> dict[str, float]:
        return {n: sum(v) / len(v) for n, v in self.recent.items() if v}
