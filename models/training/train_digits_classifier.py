"""Train darkroom-digits-classifier: python -m models.training.train_digits_classifier [--steps N] [--threads 1].

Data: the 1,500 training digits of models/training/digits.py at 32×32, as the classifier reads
them (``shape_channel``: the stroke, whatever its colour). Augmentation, fresh every step, so that
it reads generated digits too, which are never exactly like the training set: a random affine warp
(rotation ±12°, scale 0.9–1.1, shift ±2 px), stroke strength ×0.6–1, a 3×3 blur half the time and
Gaussian noise of σ up to 0.08. A quarter of every batch is not one digit, with a soft target
(outlier exposure and mixup), so that the classifier is *not* confident about what a poor
generator draws: noise and smooth random blobs (target: uniform over the classes) and two digits
of different classes blended (target: their blend weights). Loss: cross-entropy against these
probabilities; Adam with warm-up and cosine decay (``models.training.common.train``). Writes
models/weights/digits-classifier.safetensors (metadata:
data, steps, loss, held-back accuracy) and prints its sha256 and the accuracy on the 297
held-back digits. Needs scikit-learn (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch.nn import functional as F

from models.digits_classifier import NAME, ClassifierConfig, DigitsClassifier
from models.training import digits
from models.training.common import WEIGHTS_DIR, save_weights, train
from models.training.generation import provenance


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """N×1×H×W strokes in [0, 1] → the same digits warped, weakened, blurred and noised (see module docstring)."""
    n, _, h, w = x.shape
    u = torch.rand(n, 6, generator=gen)
    angle = (u[:, 0] * 2 - 1) * math.radians(12)
    scale = 0.9 + 0.2 * u[:, 1]
    shift = (u[:, 2:4] * 2 - 1) * (2 * 2 / w)  # ±2 px in affine_grid's [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x * (0.6 + 0.4 * u[:, 4].view(-1, 1, 1, 1))
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where((u[:, 5] < 0.5).view(-1, 1, 1, 1), blurred, x)
    sigma = 0.08 * torch.rand(n, 1, 1, 1, generator=gen)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def not_one_digit(
    strokes: torch.Tensor, labels: torch.Tensor, n: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n images that show no single digit, N×1×H×W in [0, 1], with their target probabilities N×10:
    a third colour noise, a third smooth colour blobs (uniform targets) — both seen, as the
    classifier sees everything, through ``shape_channel`` — and a third blends of two augmented
    digits of different classes, weights w and 1 − w with w in 0.35…0.65."""
    size = strokes.shape[-1]
    thirds = [n // 3, n // 3, n - 2 * (n // 3)]
    noise = torch.rand(thirds[0], 3, size, size, generator=gen) * torch.rand(thirds[0], 1, 1, 1, generator=gen)
    coarse = torch.randn(thirds[1], 3, 6, 6, generator=gen) + torch.randn(thirds[1], 1, 1, 1, generator=gen) - 0.5
    blobs = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    noise, blobs = digits.shape_channel(noise), digits.shape_channel(blobs)
    a = torch.randint(strokes.shape[0], (thirds[2],), generator=gen)
    b = torch.randint(strokes.shape[0], (thirds[2],), generator=gen)
    b = torch.where(labels[a] == labels[b], (b + 1) % strokes.shape[0], b)  # neighbours rarely share a class
    w = 0.35 + 0.3 * torch.rand(thirds[2], generator=gen)
    mixed = w.view(-1, 1, 1, 1) * augment(strokes[a], gen) + (1 - w.view(-1, 1, 1, 1)) * augment(strokes[b], gen)
    mix_target = w.view(-1, 1) * F.one_hot(labels[a], 10) + (1 - w.view(-1, 1)) * F.one_hot(labels[b], 10)
    mix_target = torch.where((labels[a] == labels[b]).view(-1, 1), F.one_hot(labels[a], 10).float(), mix_target)
    uniform = torch.full((thirds[0] + thirds[1], 10), 0.1)
    return torch.cat([noise, blobs, mixed]), torch.cat([uniform, mix_target])


@torch.no_grad()
def accuracy(net: DigitsClassifier, data: digits.Digits) -> float:
    net.eval()
    return float((net(digits.shape_channel(data.coloured())).argmax(1) == data.labels).float().mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-cpu-seconds", type=float, default=600)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = ClassifierConfig()
    train_set, held_back = digits.load(cfg.size)
    strokes = digits.shape_channel(train_set.coloured())
    net = DigitsClassifier(cfg)

    def make_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        others = args.batch // 4
        rows = torch.randint(strokes.shape[0], (args.batch - others,), generator=gen)
        junk, junk_target = not_one_digit(strokes, train_set.labels, others, gen)
        images = torch.cat([augment(strokes[rows], gen), junk])
        return images, torch.cat([F.one_hot(train_set.labels[rows], 10).float(), junk_target])

    stats = train(
        net,
        make_batch,
        F.cross_entropy,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        max_cpu_seconds=args.max_cpu_seconds,
    )
    held, seen = accuracy(net, held_back), accuracy(net, train_set)
    print(f"accuracy: held-back {held:.4f} ({held_back.labels.numel()} digits), train {seen:.4f}", flush=True)
    extra = {
        "model": NAME,
        **provenance(train_set),
        "input": "digits.shape_channel (max over channels) of 32x32 digits in [0, 1]",
        "augmentation": (
            "affine (rotation 12 deg, scale 0.9-1.1, shift 2 px), strength 0.6-1, 3x3 blur p=0.5, noise sigma <= 0.08"
        ),
        "not_one_digit": (
            "1/4 of each batch: noise, smooth blobs (uniform target), blends of two digits (blend-weight target)"
        ),
        "loss": "cross-entropy (soft targets)",
        "batch": str(args.batch),
        "held_back_accuracy": f"{held:.4f}",
        "train_accuracy": f"{seen:.4f}",
        **cfg.as_metadata(),
    }
    save_weights(net, "digits-classifier.safetensors", args.seed, stats, extra, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
