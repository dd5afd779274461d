"""Train darkroom-gan-digits on CPU:

    python -m models.training.train_gan_digits --steps 6000 --out /tmp/gan [--threads 1] [--seed 0]

Data: the training split of models/training/digits.py at 32×32, class-coloured (the held-back
digits are never seen). Loss: the non-saturating GAN loss (softplus form) with a projection
discriminator; both networks see real and generated digits shifted by up to ±``--shift`` pixels
with probability 1/2 (a differentiable augmentation applied to both sides, so the discriminator
does not memorise 1,500 images and the generator is not taught to shift). A mode-seeking term
(after Mao et al. 2019) keeps the generator from ignoring z for a class (without it, every sample
of a class came out the same): spread = mean |G(z1, y) - G(z2, y)| / mean |z1 - z2| over pairs of
the batch that share a class, penalised by ``--mode-seeking`` · relu(1 - spread / target), the
target being the spread of same-class training pairs (so diversity is asked for only up to that
of the data; the paper's unbounded 1 / spread made samples noisier than the data). Adam (lr 2e-4,
betas 0.5/0.999), constant learning rate. After training, the generator's BatchNorm statistics are
recomputed over ``--recalibrate`` batches of its own final activations.

Writes to ``--out``: ``darkroom-gan-digits.safetensors`` (generator only, with metadata; its
sha256 is printed and written to ``train.json``), ``loss.csv`` and class grids
``darkroom-gan-digits-step<N>.png`` at an early, the middle and the final step.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from models.gan import NAME, Discriminator, GANConfig, Generator, sampler
from models.training import digits
from models.training.common import save_weights
from models.training.generation import LossLog, provenance, save_class_grid
from models.weights import file_sha256


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Each row of N×C×H×W, with probability 1/2, moved by up to ±max_shift pixels (zero fill,
    the digits' background); differentiable in ``x``."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen) * torch.randint(2, (n, 1), generator=gen)
    rows = [
        padded[i, :, max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]
        for i, (dy, dx) in enumerate(shifts.tolist())
    ]
    return torch.stack(rows)


def real_spread(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, pairs: int = 200) -> float:
    """Mean |x1 - x2| over random pairs of training digits of the same class, averaged over classes."""
    spreads = []
    for c in labels.unique().tolist():
        same = images[labels == c]
        a, b = torch.randint(same.shape[0], (2, pairs), generator=gen)
        spreads.append(float((same[a] - same[b]).abs().mean()))
    return sum(spreads) / len(spreads)


@torch.no_grad()
def recalibrate_batchnorm(net: Generator, gen: torch.Generator, batches: int, batch: int) -> None:
    """Replace the running BatchNorm statistics by exact averages over ``batches`` random batches."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    for _ in range(batches):
        z = torch.randn(batch, net.cfg.latent_dim, generator=gen)
        net(z, torch.randint(net.cfg.num_classes, (batch,), generator=gen))
    for m in norms:
        m.momentum = 0.1
    net.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--shift", type=int, default=2, help="augmentation: largest shift in pixels (0 = none)")
    ap.add_argument("--mode-seeking", type=float, default=1.0, help="weight of the mode-seeking term (0 = none)")
    ap.add_argument("--recalibrate", type=int, default=50, help="batches for the final BatchNorm statistics")
    ap.add_argument("--d-features", type=int, default=GANConfig.d_features, help="discriminator width")
    ap.add_argument("--minibatch-std", type=int, choices=(0, 1), default=int(GANConfig.d_minibatch_std))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-cpu-seconds", type=float, default=840)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.batch % 2:
        ap.error("--batch must be even (the mode-seeking term pairs samples)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train_set = digits.load(32)[0]
    images, labels = train_set.coloured(), train_set.labels
    cfg = GANConfig(image_size=32, d_features=args.d_features, d_minibatch_std=bool(args.minibatch_std))
    g_net, d_net = Generator(cfg), Discriminator(cfg)
    g_opt = torch.optim.Adam(g_net.parameters(), lr=args.lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d_net.parameters(), lr=args.lr, betas=(0.5, 0.999))
    sample = sampler(g_net)
    target_spread = real_spread(images, labels, gen) / (2 / math.pi**0.5)  # E|z1 - z2| = 2/√π per coordinate
    grid_steps = sorted({max(1, args.steps // 20), args.steps // 2})
    log = LossLog(args.out / "loss.csv", ["d_loss", "g_loss", "spread", "d_real", "d_fake"])
    print(
        f"generator {sum(p.numel() for p in g_net.parameters())} params, discriminator "
        f"{sum(p.numel() for p in d_net.parameters())}",
        flush=True,
    )

    t0, done = time.process_time(), 0
    for step in range(1, args.steps + 1):
        g_net.train()
        idx = torch.randint(images.shape[0], (args.batch,), generator=gen)
        real, real_y = images[idx], labels[idx]
        z = torch.randn(args.batch, cfg.latent_dim, generator=gen)
        fake_y = torch.randint(cfg.num_classes, (args.batch // 2,), generator=gen).repeat(2)  # pairs for mode seeking
        fake = g_net(z, fake_y)

        d_real = d_net(random_shift(real, gen, args.shift), real_y)
        d_fake = d_net(random_shift(fake.detach(), gen, args.shift), fake_y)
        d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()

        g_loss = F.softplus(-d_net(random_shift(fake, gen, args.shift), fake_y)).mean()
        half = args.batch // 2
        spread = (fake[:half] - fake[half:]).abs().mean() / (z[:half] - z[half:]).abs().mean()
        g_opt.zero_grad(set_to_none=True)
        (g_loss + args.mode_seeking * F.relu(target_spread - spread) / target_spread).backward()
        g_opt.step()

        done = step
        cpu = time.process_time() - t0
        log.add(step, cpu, d_loss=d_loss.item(), g_loss=g_loss.item(), spread=spread.item(),
                d_real=torch.sigmoid(d_real).mean().item(), d_fake=torch.sigmoid(d_fake).mean().item())  # fmt: skip
        if step in grid_steps:
            g_net.eval()
            save_class_grid(sample, args.out / f"{NAME}-step{step}.png")
        if cpu > args.max_cpu_seconds:
            print(f"CPU budget of {args.max_cpu_seconds:.0f}s spent: stopping after {step} steps", flush=True)
            break

    recalibrate_batchnorm(g_net, gen, args.recalibrate, args.batch)
    save_class_grid(sample, args.out / f"{NAME}-step{done}.png")
    means = log.means()
    stats = {"steps": done, "final_loss": means["g_loss"], "cpu_seconds": time.process_time() - t0}
    extra = {
        "model": NAME,
        "loss": "non-saturating GAN (softplus) + mode seeking, projection discriminator with spectral norm"
        + (" and minibatch stddev" if cfg.d_minibatch_std else "")
        + "; final_loss = generator adversarial loss",
        "final_d_loss": f"{means['d_loss']:.6f}",
        "batch": str(args.batch),
        "lr": str(args.lr),
        "shift": str(args.shift),
        "mode_seeking": str(args.mode_seeking),
        "target_spread": f"{target_spread:.5f}",
        **provenance(train_set),
        **cfg.as_metadata(),
    }
    path = save_weights(g_net, f"{NAME}.safetensors", args.seed, stats, extra, out_dir=args.out)
    summary = {**stats, **means, "sha256": file_sha256(path), "bytes": path.stat().st_size}
    (args.out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
