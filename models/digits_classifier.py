"""darkroom-digits-classifier: a small CNN that names the digit in a 32×32 image, to score generators.

It reads the *shape* of a digit only — the max over colour channels
(``models.training.digits.shape_channel``), so a class-coloured sample cannot be recognised by
its hue — and returns class probabilities. Trained by
``models/training/train_digits_classifier.py`` on the 1,500 training digits of
``models/training/digits.py`` with augmentation (shifts, small rotations and scalings, stroke
strength, blur, noise) so that it also reads generated digits, and with images that show no
single digit (noise, blobs, two digits blended) and soft targets, so that it is *not* confident
about them; its accuracy is measured on the 297 held-back digits. ``benchmarks/generation_quality.py`` uses it; the
pipeline never does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.training.digits import shape_channel
from models.weights import WeightsSpec, fetch, load_state_dict

NAME = "darkroom-digits-classifier"
LICENCE = "MIT (trained by darkroom on scikit-learn's digits)"
WEIGHTS = WeightsSpec(
    uri="package://models/weights/digits-classifier.safetensors",
    # the digest train_digits_classifier.py printed
    sha256="c26cbacbce769afbbe6d281c6080fc71037fb7032c00f78fd876711a99cbab44",
    format="safetensors",
    scale=1,
    licence=LICENCE,
)


@dataclass(frozen=True)
class ClassifierConfig:
    """size: input height = width; channels: features of each level (two 3×3 convs, then a 2×2
    max-pool); dropout: before the final linear layer, in training only."""

    size: int = 32
    channels: tuple[int, ...] = (16, 32, 64)
    num_classes: int = 10
    dropout: float = 0.2

    def as_metadata(self) -> dict[str, str]:
        return {f"config.{k}": str(v) for k, v in asdict(self).items()}


class DigitsClassifier(nn.Module):
    """float32 N×1×size×size strokes in [0, 1] (white on black) → N×num_classes logits."""

    def __init__(self, cfg: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        cin = 1
        for c in cfg.channels:
            layers += [
                nn.Conv2d(cin, c, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(cin, cfg.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(spec: WeightsSpec = WEIGHTS, cfg: ClassifierConfig = ClassifierConfig()) -> DigitsClassifier:
    """The shipped classifier (sha256-checked), in eval mode on the CPU."""
    net = DigitsClassifier(cfg)
    net.load_state_dict(load_state_dict(fetch(spec.uri, spec.sha256)))
    return net.eval()


@torch.no_grad()
def probabilities(net: DigitsClassifier, images: torch.Tensor) -> torch.Tensor:
    """float32 N×C×size×size images in [0, 1] (any C, any colours) → N×num_classes probabilities."""
    return torch.softmax(net(shape_channel(images.float())), dim=1)
