"""scikit-learn's handwritten digits as darkroom's generation training and scoring data.

The 1,797 digits (8×8, values 0…16, white strokes on black) are upsampled bilinearly to
``size``×``size`` and split once, deterministically, into a training set and a held-back set
(the last ``HELD_BACK`` of a fixed permutation) that no project model ever trains on: the
zero-shot restoration and classifier-accuracy figures are measured on it.

Colour: generation models learn *class-coloured* digits (:func:`colourise`), strokes painted in a
fixed hue per class on black. The colour then carries information a prior can infer from the
shape, which makes zero-shot colorization (grayscale → colour) measurable against ground truth.
Every palette colour has its largest component equal to 1, so :func:`shape_channel` (the max over
channels) gives back the grayscale stroke exactly: the digits classifier reads shape only and
cannot score a sample by its colour.

Needs scikit-learn (the ``test`` extra); nothing at inference time imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

HELD_BACK = 297  # digits never trained on: 1,500 train / 297 held back
SPLIT_SEED = 20261129

# One fully saturated hue per class (max component 1), far apart on the colour wheel.
PALETTE = torch.tensor(
    [
        [1.00, 0.20, 0.20],  # 0 red
        [1.00, 0.60, 0.00],  # 1 orange
        [1.00, 1.00, 0.00],  # 2 yellow
        [0.40, 1.00, 0.00],  # 3 lime
        [0.00, 1.00, 0.50],  # 4 spring green
        [0.00, 1.00, 1.00],  # 5 cyan
        [0.00, 0.50, 1.00],  # 6 azure
        [0.40, 0.20, 1.00],  # 7 violet
        [1.00, 0.00, 1.00],  # 8 magenta
        [1.00, 1.00, 1.00],  # 9 white
    ],
    dtype=torch.float32,
)


@dataclass(frozen=True)
class Digits:
    """images: float32 N×1×size×size in [0, 1]; labels: int64 (N,) in 0…9."""

    images: torch.Tensor
    labels: torch.Tensor

    def coloured(self) -> torch.Tensor:
        """float32 N×3×size×size in [0, 1]: see :func:`colourise`."""
        return colourise(self.images, self.labels)


def load(size: int = 32) -> tuple[Digits, Digits]:
    """(train, held_back) digits at ``size``×``size``; the same split on every call and machine."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.from_numpy(raw.target.astype(np.int64))
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, held = order[:-HELD_BACK], order[-HELD_BACK:]
    return Digits(images[train], labels[train]), Digits(images[held], labels[held])


def colourise(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """N×1×H×W grayscale strokes in [0, 1] + (N,) labels → N×3×H×W painted in PALETTE[label]."""
    return images * PALETTE[labels].view(-1, 3, 1, 1)


def shape_channel(images: torch.Tensor) -> torch.Tensor:
    """N×C×H×W in [0, 1] → N×1×H×W: the max over channels (the stroke, whatever its colour)."""
    return images.amax(dim=1, keepdim=True)


# Captions ("a red seven"): any digit in any of these colours, so that the colour in a caption is
# not implied by the shape (unlike the class-coloured PALETTE the generators learn).
CAPTION_COLOURS = {
    "red": (1.0, 0.15, 0.15),
    "green": (0.15, 1.0, 0.15),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (1.0, 1.0, 0.1),
    "cyan": (0.1, 1.0, 1.0),
    "magenta": (1.0, 0.1, 1.0),
    "white": (1.0, 1.0, 1.0),
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def caption(label: int, colour: str) -> str:
    """The caption of a digit painted in a CAPTION_COLOURS colour, e.g. ``a red seven``."""
    return f"a {colour} {DIGIT_WORDS[label]}"


def paint(images: torch.Tensor, colours: list[str]) -> torch.Tensor:
    """N×1×H×W strokes in [0, 1] + N CAPTION_COLOURS names → N×3×H×W, on black."""
    rgb = torch.tensor([CAPTION_COLOURS[c] for c in colours], dtype=torch.float32)
    return images * rgb.view(-1, 3, 1, 1)


def read_caption(text: str) -> tuple[int | None, str | None]:
    """(digit, colour) a caption names (the first digit word and colour word in it), None where it names none."""
    words = text.lower().split()
    digit = next((DIGIT_WORDS.index(w) for w in words if w in DIGIT_WORDS), None)
    colour = next((w for w in words if w in CAPTION_COLOURS), None)
    return digit, colour
