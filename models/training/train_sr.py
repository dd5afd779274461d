"""Train darkroom-sr-x4: python -m models.training.train_sr [--steps N] [--seed S].

Patches: 96×96 random crops (flips, rotations, channel order) of the training images;
input: the crop shrunk ×4 with darkroom's antialiased bicubic (models/resample), rounded to
8 bits; loss: L1 against the crop. Writes models/weights/darkroom-sr-x4.safetensors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.nn import functional as F

from models.darkroom_sr import NAME, DarkroomSR, SRConfig
from models.resample import resize
from models.training.common import init_from, quantize, random_patches, save_weights, train, training_images


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=96, help="high-resolution patch side (multiple of 4)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, help="continue from these weights (a second warm-up + cosine cycle)")
    ap.add_argument("--max-cpu-seconds", type=float, default=420)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    images = training_images(args.seed)
    cfg = SRConfig()
    net = DarkroomSR(cfg)
    lr_side = args.patch // cfg.upscale
    prior = init_from(net, args.init)

    def make_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        hr = random_patches(images, args.batch, args.patch, gen)
        return quantize(resize(hr, lr_side, lr_side, "bicubic")), hr

    stats = train(
        net, make_batch, F.l1_loss, steps=args.steps, lr=args.lr, seed=args.seed, max_cpu_seconds=args.max_cpu_seconds
    )
    stats["steps"] += int(prior.get("steps", 0))
    extra = {
        "model": NAME,
        "degradation": "antialiased bicubic x4 downscale (models.resample), 8-bit rounding",
        "loss": "L1",
        "batch": str(args.batch),
        "patch": str(args.patch),
        **cfg.as_metadata(),
        **({"init_from_sha256": prior["sha256"], "steps_before": prior["steps"]} if prior else {}),
    }
    save_weights(net, f"{NAME}.safetensors", args.seed, stats, extra)


if __name__ == "__main__":
    main()
