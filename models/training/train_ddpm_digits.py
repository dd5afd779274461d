"""Train darkroom-ddpm-digits, a small pixel-space DDPM of class-coloured digits, on CPU.

    python -m models.training.train_ddpm_digits [--steps 1800] [--max-cpu-seconds 1080] [--threads 1] [--init FOLDER]

Data: the 1,500 training digits of models/training/digits.py at 32×32, class-coloured
(``digits.colourise``: stroke hue = class), scaled to [-1, 1]; the 297 held-back digits are never
seen. Every step a batch is noised at uniform random timesteps t ∈ 0…T-1 and the UNet
(``models.ddpm_digits.CONFIG``) learns to predict the noise: mean-squared error (with
``--min-snr γ`` > 0, each sample's error weighted by min(SNR_t, γ) / SNR_t, Hang et al. 2023, so
the nearly clean timesteps, where the noise is easy to see, weigh less), Adam with warm-up
and cosine decay (``models.training.common.train``), and an exponential moving average (EMA) of
the weights, which is what ships. ``--init`` continues from an earlier run's folder (another
warm-up and cosine cycle; steps and CPU time then count the whole chain, ``training.json`` keeps
one summary per run, and the metadata names the weights it started from).

Writes ``--out`` (default models/weights/ddpm-digits/): the EMA weights as a diffusers folder
(``config.json``, ``diffusion_pytorch_model.safetensors`` carrying the training metadata,
``scheduler_config.json``) plus ``training.json`` (data, steps, loss curve, sha256 of the weights
file, which ``models.ddpm_digits.WEIGHTS`` pins); and ``--grids`` (default docs/images/):
``ddpm-digits-{early,middle,final}.png``, 40 DDIM-50 samples of the EMA after about 10 %, 50 %
and 100 % of the steps, the same seeds each time. Needs scikit-learn (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from torchvision.utils import save_image

from models.ddpm_digits import CONFIG, NAME
from models.diffusers_folder import WEIGHTS_NAME, load_pipeline_folder, save_pipeline_folder
from models.diffusion import build_unet, ddim_sample, sample_generator, unet_eps
from models.training import digits
from models.training.common import WEIGHTS_DIR, train
from models.training.generation import GRID_SEED, provenance
from models.weights import file_sha256, save_atomic

REPO = Path(__file__).resolve().parents[2]
RUN_KEYS = (
    "steps",
    "batch",
    "lr",
    "seed",
    "loss",
    "cpu_seconds",
    "wall_seconds",
    "final_loss",
    "weights_sha256",
    "grids",
    "loss_curve",
)
GRID_SAMPLES, GRID_COLUMNS, GRID_STEPS = 40, 10, 50


class EpsNet(nn.Module):
    """``common.train`` calls ``net(inputs)``: inputs = (x_t N×3×32×32, t int64 (N,)) → ε̂."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x_t, t = inputs
        return self.unet(x_t, t).sample


class EMA:
    """Exponential moving average of a network's weights, decay warming up as (1+n)/(10+n) ≤ ``decay``
    so that a short run's average is not dominated by its first, random weights."""

    def __init__(self, net: nn.Module, decay: float):
        self.net, self.decay = copy.deepcopy(net).eval().requires_grad_(False), decay

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for avg, p in zip(self.net.parameters(), net.parameters()):
            avg.lerp_(p, 1 - decay)


def save_grid(unet, path: Path) -> None:
    """GRID_SAMPLES DDIM samples (seeds sample_generator(GRID_SEED, 0…)) as one PNG, pixels 2× (nearest)."""
    gens = [sample_generator(GRID_SEED, i) for i in range(GRID_SAMPLES)]
    shape = (GRID_SAMPLES, CONFIG.in_channels, CONFIG.sample_size, CONFIG.sample_size)
    eps = unet_eps(unet, micro_batch=GRID_SAMPLES)
    images = ddim_sample(eps, shape, CONFIG.schedule.alphas_cumprod(), gens, GRID_STEPS)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(
        F.interpolate(images, scale_factor=2, mode="nearest"), path, nrow=GRID_COLUMNS, padding=2, pad_value=0.25
    )
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1800, help="optimiser steps (fewer if the CPU budget runs out)")
    ap.add_argument("--max-cpu-seconds", type=float, default=1080)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ema", type=float, default=0.995, help="largest EMA decay")
    ap.add_argument("--min-snr", type=float, default=0.0, help="γ of the min-SNR loss weighting; 0: plain MSE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR / "ddpm-digits", help="diffusers folder to write")
    ap.add_argument("--grids", type=Path, default=REPO / "docs" / "images", help="folder for the sample grids")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--init", type=Path, help="continue from the diffusers folder of an earlier run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_set = digits.load(CONFIG.sample_size)[0]
    data = train_set.coloured() * 2 - 1
    acp = CONFIG.schedule.alphas_cumprod()
    net = EpsNet(build_unet(CONFIG))
    prior: dict[str, str] = {}
    earlier: list[dict] = []  # one summary per earlier run of the chain that --init continues
    if args.init is not None:
        net.unet.load_state_dict(load_pipeline_folder(str(args.init)).state_dict())
        record = json.loads((args.init / "training.json").read_text())
        earlier = record.get("runs") or [
            {k: record[k] for k in RUN_KEYS if k in record}
        ]  # a first run: the record is the run
        for run in earlier:
            run.setdefault("loss", "MSE on the noise")  # records written before the loss was recorded
        prior = {"init_from_sha256": record["weights_sha256"], "steps_before": record["steps"]}
    ema = EMA(net.unet, args.ema)
    params = sum(p.numel() for p in net.parameters())
    print(
        f"{data.shape[0]} digits {tuple(data.shape[1:])}; UNet {params:,} parameters; ≤ {args.steps} steps", flush=True
    )

    losses: list[float] = []
    curve: list[tuple[int, float]] = []
    grid_steps = {max(1, args.steps // 10): "early", args.steps // 2: "middle"}
    grids: dict[str, int] = {}

    snr = acp / (1 - acp)
    weight = (snr.clamp(max=args.min_snr) / snr) if args.min_snr > 0 else torch.ones_like(snr)

    def make_batch(gen: torch.Generator) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        x0 = data[torch.randint(data.shape[0], (args.batch,), generator=gen)]
        t = torch.randint(CONFIG.schedule.num_train_timesteps, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        return (a.sqrt() * x0 + (1 - a).sqrt() * noise, t), (noise, weight[t])

    def loss_fn(pred: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        noise, w = target
        loss = (w * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        losses.append(loss.item())
        return loss

    def on_step(step: int) -> None:
        ema.update(net.unet, step)
        if step % 100 == 0:
            curve.append((step, sum(losses[-100:]) / len(losses[-100:])))
        if step in grid_steps:
            grids[grid_steps[step]] = step
            save_grid(ema.net, args.grids / f"ddpm-digits-{grid_steps[step]}.png")

    started = time.time()
    stats = train(
        net,
        make_batch,
        loss_fn,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        max_cpu_seconds=args.max_cpu_seconds,
        on_step=on_step,
    )
    wall = time.time() - started
    grids["final"] = int(stats["steps"])
    save_grid(ema.net, args.grids / "ddpm-digits-final.png")

    args.out.mkdir(parents=True, exist_ok=True)
    save_pipeline_folder(ema.net, CONFIG.schedule, args.out)
    meta = {
        "model": NAME,
        **provenance(train_set),
        "seed": str(args.seed),
        "steps": str(int(stats["steps"]) + int(prior.get("steps_before", 0))),
        **prior,
        "batch": str(args.batch),
        "lr": str(args.lr),
        "ema_decay": str(args.ema),
        "loss": f"MSE on the noise, min-SNR weighted (gamma {args.min_snr})"
        if args.min_snr > 0
        else "MSE on the noise",
        "final_loss": f"{stats['final_loss']:.6f}",
        "cpu_seconds": f"{stats['cpu_seconds'] + sum(float(r['cpu_seconds']) for r in earlier):.0f}",
        "training_runs": str(len(earlier) + 1),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    weights = args.out / WEIGHTS_NAME
    # diffusers wrote the file with {"format": "pt"} only: rewrite it with the provenance as well.
    save_atomic(load_file(str(weights)), weights, {"format": "pt", **meta})
    weights.chmod(0o644)
    digest = file_sha256(weights)
    offset = int(prior.get("steps_before", 0))
    this_run = {
        "steps": str(int(stats["steps"])),
        "batch": str(args.batch),
        "lr": str(args.lr),
        "seed": str(args.seed),
        "loss": meta["loss"],
        "cpu_seconds": f"{stats['cpu_seconds']:.0f}",
        "wall_seconds": round(wall),
        "final_loss": meta["final_loss"],
        "weights_sha256": digest,
        "grids": {k: v + offset for k, v in grids.items()},
        "loss_curve": [(s + offset, loss) for s, loss in curve],
    }
    record = {
        **meta,
        "wall_seconds": round(wall) + sum(r["wall_seconds"] for r in earlier),
        "parameters": params,
        # flat, the schedule's fields last, as training.json has always recorded the config
        "config": {**{k: v for k, v in asdict(CONFIG).items() if k != "schedule"}, **asdict(CONFIG.schedule)},
        "weights_sha256": digest,
        "runs": [*earlier, this_run],
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}/ ({weights.stat().st_size / 1e6:.2f} MB weights)\nsha256 {digest}", flush=True)


if __name__ == "__main__":
    main()
