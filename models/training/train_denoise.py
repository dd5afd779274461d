"""Train darkroom-denoise: python -m models.training.train_denoise [--steps N] [--seed S].

Patches: random crops (default 16 × 48², flips, rotations, channel order) of the training
images; input: crop + Gaussian noise, sigma drawn per patch uniformly from [0, 50]/255 (not
clipped); loss: MSE against the crop. Writes models/weights/darkroom-denoise.safetensors
(or --out-dir). With --init it continues from earlier weights and the metadata records the
whole history (total steps and CPU time, the earlier file's sha256, steps and patches).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import safe_open
from torch.nn import functional as F

from models.darkroom_denoise import NAME, DarkroomDenoise, DenoiseConfig
from models.training.common import WEIGHTS_DIR, init_from, random_patches, save_weights, train, training_images
from models.weights import save_atomic

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
    ap.add_argument("--max-wall-seconds", type=float, help="also end (annealed) within this wall-clock time")
    ap.add_argument(
        "--out-dir", type=Path, default=WEIGHTS_DIR, help="where the final weights go (trial runs: elsewhere)"
    )
    ap.add_argument("--checkpoint", type=Path, help="save the weights here every 500 steps (to salvage a cut-off run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    images = training_images(args.seed)
    cfg = DenoiseConfig()
    net = DarkroomDenoise(cfg)
    prior = init_from(net, args.init)
    if prior:  # init_from reports steps and sha256; the earlier run's CPU time and patches are in its metadata too
        with safe_open(str(args.init), "pt") as fh:
            meta = fh.metadata() or {}
        prior.update(
            cpu_seconds=meta.get("cpu_seconds", "0"), batch=meta.get("batch", "?"), patch=meta.get("patch", "?")
        )

    def make_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        clean = random_patches(images, args.batch, args.patch, gen)
        sigma = torch.rand(args.batch, 1, 1, 1, generator=gen) * MAX_SIGMA
        return clean + sigma * torch.randn(clean.shape, generator=gen), clean

    def checkpoint(done: int) -> None:
        if args.checkpoint is not None and done % 500 == 0:
            save_atomic(
                {k: v.detach().clone() for k, v in net.state_dict().items()}, args.checkpoint, {"steps": str(done)}
            )

    stats = train(
        net,
        make_batch,
        F.mse_loss,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        max_cpu_seconds=args.max_cpu_seconds,
        max_wall_seconds=args.max_wall_seconds,
        on_step=checkpoint,
    )
    run = dict(stats)
    stats["steps"] += int(prior.get("steps", 0))
    # A continued run records the whole history: total steps and CPU time, and what it started from.
    stats["cpu_seconds"] += float(prior.get("cpu_seconds", 0))
    extra = {
        "model": NAME,
        "degradation": "additive Gaussian noise, sigma ~ U[0, 50]/255 per patch, unclipped",
        "loss": "MSE",
        "batch": str(args.batch),
        "patch": str(args.patch),
        **cfg.as_metadata(),
        **(
            {
                "init_from_sha256": prior["sha256"],
                "steps_before": prior["steps"],
                "cpu_seconds_before": prior["cpu_seconds"],
                "batch_before": prior["batch"],
                "patch_before": prior["patch"],
                "steps_this_run": str(run["steps"]),
                "cpu_seconds_this_run": f"{run['cpu_seconds']:.0f}",
                "lr_this_run": str(args.lr),
            }
            if prior
            else {}
        ),
    }
    save_weights(net, f"{NAME}.safetensors", args.seed, stats, extra, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
