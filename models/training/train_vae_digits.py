"""Train darkroom-vae-digits on CPU:

    python -m models.training.train_vae_digits --steps 6000 --out /tmp/vae [--threads 1] [--seed 0]

Data: the training split of models/training/digits.py at 32×32, class-coloured (the held-back
digits are never seen). Loss: the negative ELBO (Bernoulli cross-entropy summed over pixels + KL
to N(0, I), nats per image; models.vae.negative_elbo). Adam with warm-up and cosine decay
(models.training.common.train); the reparameterisation noise is drawn from the training
generator, so a run is reproducible from ``--seed``.

Writes to ``--out``: ``darkroom-vae-digits.safetensors`` (with metadata; its sha256 is printed
and written to ``train.json``), ``loss.csv`` and class grids ``darkroom-vae-digits-step<N>.png``
at an early, the middle and the final step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from models.training import digits
from models.training.common import save_weights, train
from models.training.generation import LossLog, provenance, save_class_grid
from models.vae import NAME, VAE, VAEConfig, negative_elbo, sampler
from models.weights import file_sha256


class _Objective(nn.Module):
    """common.train's view of the VAE: one batch (x, y, noise) in, (logits, mean, logvar) out."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
        return self.vae(*batch)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-cpu-seconds", type=float, default=840)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_set = digits.load(32)[0]
    images, labels = train_set.coloured(), train_set.labels
    cfg = VAEConfig(image_size=32)
    vae = VAE(cfg)
    sample = sampler(vae)
    grid_steps = {max(1, args.steps // 20), args.steps // 2}
    log = LossLog(args.out / "loss.csv", ["loss", "reconstruction", "kl"])
    print(f"VAE {sum(p.numel() for p in vae.parameters())} params", flush=True)
    t0, step = time.process_time(), 0

    def make_batch(gen: torch.Generator):
        idx = torch.randint(images.shape[0], (args.batch,), generator=gen)
        noise = torch.randn(args.batch, cfg.latent_dim, generator=gen)
        return (images[idx], labels[idx], noise), images[idx]

    def loss_fn(out, target):
        nonlocal step
        step += 1
        loss, recon, kl = negative_elbo(*out, target)
        log.add(step, time.process_time() - t0, loss=loss.item(), reconstruction=recon.item(), kl=kl.item())
        return loss

    def on_step(done: int) -> None:
        if done in grid_steps:
            with torch.no_grad():
                save_class_grid(sample, args.out / f"{NAME}-step{done}.png")

    stats = train(
        _Objective(vae), make_batch, loss_fn,
        steps=args.steps, lr=args.lr, seed=args.seed, max_cpu_seconds=args.max_cpu_seconds,
        log_every=10**9, on_step=on_step,
    )  # fmt: skip
    save_class_grid(sample, args.out / f"{NAME}-step{int(stats['steps'])}.png")
    means = log.means()
    extra = {
        "model": NAME,
        "loss": "negative ELBO: Bernoulli cross-entropy summed over pixels + KL, nats per image",
        "final_reconstruction": f"{means['reconstruction']:.6f}",
        "final_kl": f"{means['kl']:.6f}",
        "batch": str(args.batch),
        "lr": str(args.lr),
        **provenance(train_set),
        **cfg.as_metadata(),
    }
    path = save_weights(vae, f"{NAME}.safetensors", args.seed, stats, extra, out_dir=args.out)
    summary = {**stats, **means, "sha256": file_sha256(path), "bytes": path.stat().st_size}
    (args.out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
