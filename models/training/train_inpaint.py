"""Train darkroom-inpaint: python -m models.training.train_inpaint [--steps N] [--seed S].

Patches: random crops (flips, rotations, channel order) of the training images, rounded to
8 bits; holes: :func:`hole_mask` (scratches, boxes, blobs covering 3–35% of the patch);
loss: L1 over the patch (known pixels are pasted back and carry no error, so it is the hole
error, weighted by how much of the patch is hole).
Writes models/weights/darkroom-inpaint.safetensors.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch.nn import functional as F

from models.darkroom_inpaint import NAME, DarkroomInpaint, InpaintConfig
from models.training.common import init_from, quantize, random_patches, save_weights, train, training_images


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def hole_mask(
    gen: torch.Generator, height: int, width: int, coverage: tuple[float, float] = (0.03, 0.35)
) -> torch.Tensor:
    """A random H×W bool mask, True = hole: what restoration jobs mask out.

    Thick polyline scratches, axis-aligned boxes and ellipses, drawn until the holes cover a
    fraction drawn uniformly from ``coverage`` of the image (or 40 shapes were drawn; the last
    shape may overshoot). Sizes scale with the image's shorter side. Deterministic given
    ``gen``'s state.
    """
    side = min(height, width)
    yy = torch.arange(height, dtype=torch.float32)[:, None]
    xx = torch.arange(width, dtype=torch.float32)[None, :]
    holes = torch.zeros(height, width, dtype=torch.bool)
    target = _uniform(gen, *coverage)
    for _ in range(40):
        if float(holes.float().mean()) >= target:
            break
        kind = int(torch.randint(3, (), generator=gen))
        cy, cx = _uniform(gen, 0, height), _uniform(gen, 0, width)
        if kind == 0:  # a scratch: 1–4 connected segments of one width
            radius = _uniform(gen, 1, max(1.5, side / 32))
            for _ in range(int(torch.randint(1, 5, (), generator=gen))):
                angle, length = _uniform(gen, 0, 2 * math.pi), _uniform(gen, side / 16, side / 2)
                ey, ex = cy + length * math.sin(angle), cx + length * math.cos(angle)
                dy, dx = ey - cy, ex - cx
                t = (((yy - cy) * dy + (xx - cx) * dx) / max(dy * dy + dx * dx, 1e-6)).clamp(0, 1)
                holes |= (yy - cy - t * dy) ** 2 + (xx - cx - t * dx) ** 2 <= radius**2
                cy, cx = ey, ex
        elif kind == 1:  # a box
            hh, hw = _uniform(gen, side / 32, side / 6), _uniform(gen, side / 32, side / 6)
            holes |= ((yy - cy).abs() <= hh) & ((xx - cx).abs() <= hw)
        else:  # an ellipse
            ry, rx = _uniform(gen, side / 32, side / 8), _uniform(gen, side / 32, side / 8)
            holes |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return holes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=96, help="patch side (multiple of 8)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, help="continue from these weights (a second warm-up + cosine cycle)")
    ap.add_argument("--max-cpu-seconds", type=float, default=600)
    ap.add_argument("--out-dir", type=Path, help="write the weights here instead of models/weights/")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    images = training_images(args.seed)
    cfg = InpaintConfig()
    net = DarkroomInpaint(cfg)
    prior = init_from(net, args.init)

    def make_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        clean = quantize(random_patches(images, args.batch, args.patch, gen))
        known = torch.stack([~hole_mask(gen, args.patch, args.patch) for _ in range(args.batch)])[:, None].float()
        # Holes hold noise, not the truth: the network must never learn to read them.
        damaged = torch.where(known > 0, clean, torch.rand(clean.shape, generator=gen))
        return torch.cat([damaged, known], dim=1), clean

    stats = train(
        net, make_batch, F.l1_loss, steps=args.steps, lr=args.lr, seed=args.seed, max_cpu_seconds=args.max_cpu_seconds
    )
    stats["steps"] += int(prior.get("steps", 0))
    extra = {
        "model": NAME,
        "degradation": (
            "synthetic hole masks (models.training.train_inpaint.hole_mask: scratches, boxes, ellipses; "
            "3-35% of the patch), holes filled with uniform noise"
        ),
        "loss": "L1 (known pixels pasted back)",
        "batch": str(args.batch),
        "patch": str(args.patch),
        **cfg.as_metadata(),
        **({"init_from_sha256": prior["sha256"], "steps_before": prior["steps"]} if prior else {}),
    }
    kwargs = {"out_dir": args.out_dir} if args.out_dir else {}
    save_weights(net, f"{NAME}.safetensors", args.seed, stats, extra, **kwargs)


if __name__ == "__main__":
    main()
