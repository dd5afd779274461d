"""Train a small pixel-space DDPM on scikit-learn's handwritten digits, on CPU.

    python -m models.train_ddpm_digits --steps 2000 --out out/ddpm-digits [--size 16] [--threads 1]

The 1,797 digits (8×8, values 0…16) are upsampled bilinearly to ``--size`` (16 or 32), scaled
to [-1, 1] and, every step, a batch is noised at uniform random timesteps; the UNet learns to
predict the noise (mean-squared error, AdamW, an exponential moving average of the weights).

Writes to ``--out``: the EMA weights as a diffusers folder (``config.json`` +
``diffusion_pytorch_model.safetensors`` + ``scheduler_config.json``, loadable with
``models.diffusion.load_pipeline_folder``), ``loss.csv`` (step, mean loss over the last
``--log-every`` steps) and ``samples.png`` (a grid of DDIM samples, seeds 0…n-1).
Needs scikit-learn (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from models.diffusion import DDPMConfig, build_unet, ddim_sample, sample_generator, save_pipeline_folder, unet_eps


def digits_dataset(size: int) -> torch.Tensor:
    """float32 1797×1×size×size in [-1, 1] (white strokes on black)."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images * 2 - 1


def digits_config(size: int) -> DDPMConfig:
    return DDPMConfig(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64) if size <= 16 else (32, 64, 64),
        layers_per_block=1,
        norm_num_groups=8,
        num_train_timesteps=1000,
    )


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, zoom: int = 4) -> None:
    """N×1×H×W in [0, 1] → one PNG, ``columns`` per row, each image scaled by ``zoom`` (nearest)."""
    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.zeros(rows * (h + 1) + 1, columns * (w + 1) + 1)
    for i, img in enumerate(images[:, 0]):
        r, c = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="L").resize((pixels.shape[1] * zoom, pixels.shape[0] * zoom), Image.NEAREST).save(path)


def train(steps: int, out: Path, size: int = 16, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
          log_every: int = 100, samples: int = 64, sample_steps: int = 50) -> list[tuple[int, float]]:
    torch.manual_seed(seed)
    data = digits_dataset(size)
    cfg = digits_config(size)
    unet = build_unet(cfg).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))  # short warm-up
    acp = cfg.alphas_cumprod()
    print(f"{data.shape[0]} digits at {size}×{size}; UNet {sum(p.numel() for p in unet.parameters()):,} parameters; {steps} steps")

    curve: list[tuple[int, float]] = []
    window, started = [], time.time()
    for step in range(1, steps + 1):
        x0 = data[torch.randint(0, data.shape[0], (batch_size,))]
        t = torch.randint(0, cfg.num_train_timesteps, (batch_size,))
        noise = torch.randn_like(x0)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            curve.append((step, sum(window) / len(window)))
            print(f"step {step:6d}  loss {curve[-1][1]:.4f}  {time.time() - started:7.1f}s", flush=True)
            window = []

    out.mkdir(parents=True, exist_ok=True)
    save_pipeline_folder(ema, cfg, out)
    with open(out / "loss.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("step", "loss"), *curve])
    gens = [sample_generator(seed, i) for i in range(samples)]
    images = ddim_sample(unet_eps(ema, micro_batch=samples), (samples, 1, size, size), acp, gens, num_steps=sample_steps, eta=0.0)
    save_grid(images, out / "samples.png")
    print(f"wrote {out}/ (diffusers folder, loss.csv, samples.png) in {time.time() - started:.0f}s")
    return curve


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000, help="optimiser steps")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--size", type=int, default=16, choices=(16, 32), help="training resolution")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--samples", type=int, default=64, help="images in samples.png")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for samples.png")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args.steps, args.out, args.size, args.batch_size, args.lr, args.seed, args.log_every, args.samples, args.sample_steps)


if __name__ == "__main__":
    main()
