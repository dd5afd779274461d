"""Train darkroom-denoise: python -m models.training.train_denoise [--steps N] [--seed S].

Patches: 48×48 random crops (flips, rotations, channel order) of the training images;
input: crop + Gaussian noise, sigma drawn per patch uniformly from [0, 50]/255 (not
clipped); loss: MSE against the crop. Writes models/weights/darkroom-denoise.safetensors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.nn import functional as F

from models.darkroom_denoise import NAME, DarkroomDenoise, DenoiseConfig
from models.training.common import init_from, random_patches, save_weights, train, training_images

MAX_SIGMA = 50 / 255


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, help="continue from these weights (a second warm-up + cosine cycle)")
    ap.add_argument("--max-cpu-seconds", type=float, default=420)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    images = training_images(args.seed)
    cfg = DenoiseConfig()
    net = DarkroomDenoise(cfg)
    prior = init_from(net, args.init)

    def make_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        clean = random_patches(images, args.batch, args.patch, gen)
        sigma = torch.rand(args.batch, 1, 1, 1, generator=gen) * MAX_SIGMA
        return clean + sigma * torch.randn(clean.shape, generator=gen), clean

    stats = train(net, make_batch, F.mse_loss, steps=args.steps, lr=args.lr, seed=args.seed, max_cpu_seconds=args.max_cpu_seconds)
    stats["steps"] += int(prior.get("steps", 0))
    extra = {
        "model": NAME,
        "degradation": "additive Gaussian noise, sigma ~ U[0, 50]/255 per patch, unclipped",
        "loss": "MSE",
        "batch": str(args.batch),
        "patch": str(args.patch),
        **cfg.as_metadata(),
        **({"init_from_sha256": prior["sha256"], "steps_before": prior["steps"]} if prior else {}),
    }
    save_weights(net, f"{NAME}.safetensors", args.seed, stats, extra)


if __name__ == "__main__":
    main()
