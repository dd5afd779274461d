"""Measured quality of darkroom's own models on held-out images (never used in training).

×4 super-resolution: each held-out image (cropped to a multiple of 4) is shrunk ×4 with
darkroom's antialiased bicubic and rounded to 8 bits — the degradation the model was trained
for — then enlarged by darkroom-sr-x4, bicubic and Lanczos-3. PSNR on the Y channel
(BT.601, 8-bit outputs), 4-pixel border shaved.

Denoising: additive Gaussian noise, sigma = 25/255, unclipped, fixed seed; darkroom-denoise
against scikit-image's non-local means (fast mode, 5×5 patches, 13×13 search, h = 0.8·sigma),
once given the true sigma and once with sigma estimated from the noisy image
(Immerkær's method, see estimate_noise_sigma). PSNR on RGB, 8-bit outputs, no border shaved.

Speed: images per CPU-second (process CPU time, so a busy shared machine does not distort it),
torch threads as given (--threads, default 1), model load excluded.

    .venv/bin/python benchmarks/quality.py            # table; benchmarks/results/quality.json; docs/quality.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from models import default_registry
from models.resample import resize
from models.training.common import HELD_OUT, quantize, sample_image

REPO = Path(__file__).resolve().parents[1]
EVAL_IMAGES = tuple(n for n in HELD_OUT if n != "cat")  # cat is chelsea again
SIGMA = 25.0
SEED = 1234
SR_TARGET_DB = 1.0
DN_TARGET_DB = 1.0
COMMAND = ".venv/bin/python benchmarks/quality.py"


def rgb_to_y(x: np.ndarray) -> np.ndarray:
    """H×W×3 in [0, 1] → BT.601 luma on the 0–255 scale (16–235)."""
    return 16.0 + x @ np.array([65.481, 128.553, 24.966])


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def psnr_y(out: np.ndarray, ref: np.ndarray, shave: int = 4) -> float:
    s = slice(shave, -shave) if shave else slice(None)
    return psnr(rgb_to_y(out)[s, s], rgb_to_y(ref)[s, s], 255.0)


def to_np(x: torch.Tensor) -> np.ndarray:
    return quantize(x)[0].permute(1, 2, 0).numpy().astype(np.float64)


def to_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))[None]


def run_module(module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    t = time.process_time()
    with torch.inference_mode():
        y = module(x)
    return y, time.process_time() - t


def sr_rows(reg) -> list[dict]:
    methods = {"darkroom-sr-x4": reg.build("darkroom-sr-x4"), "bicubic": reg.build("bicubic", {"scale": 4}), "lanczos": reg.build("lanczos", {"scale": 4})}
    rows = {name: {"task": "sr-x4", "method": name, "psnr_y": {}, "seconds": 0.0} for name in methods}
    for img_name in EVAL_IMAGES:
        hr = sample_image(img_name)
        h, w = (hr.shape[0] // 4) * 4, (hr.shape[1] // 4) * 4
        hr = quantize(to_t(hr[:h, :w]))
        lr = quantize(resize(hr, h // 4, w // 4, "bicubic"))
        ref = to_np(hr)
        for name, model in methods.items():
            out, secs = run_module(model.module, lr)
            rows[name]["psnr_y"][img_name] = round(psnr_y(to_np(out), ref), 3)
            rows[name]["seconds"] += secs
    return list(rows.values())


def denoise_rows(reg) -> list[dict]:
    from skimage.restoration import denoise_nl_means

    model = reg.build("darkroom-denoise")
    sigma = SIGMA / 255
    rng = np.random.default_rng(SEED)
    names = ["noisy input", "darkroom-denoise", "nlm (sigma given)", "nlm (sigma estimated)"]
    rows = {n: {"task": "denoise-sigma25", "method": n, "psnr_rgb": {}, "seconds": 0.0} for n in names}
    for img_name in EVAL_IMAGES:
        clean = np.round(sample_image(img_name).astype(np.float64) * 255) / 255
        noisy = clean + rng.normal(0, sigma, clean.shape)
        outs = {"noisy input": (noisy, 0.0)}
        out, secs = run_module(model.module, to_t(noisy))
        outs["darkroom-denoise"] = (to_np(out), secs)
        nlm = dict(patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1)
        t = time.process_time()
        given = denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, **nlm)
        outs["nlm (sigma given)"] = (given, time.process_time() - t)
        t = time.process_time()
        est = estimate_noise_sigma(noisy)
        estimated = denoise_nl_means(noisy, h=0.8 * est, sigma=est, **nlm)
        outs["nlm (sigma estimated)"] = (estimated, time.process_time() - t)
        for n, (o, secs) in outs.items():
            o8 = np.round(np.clip(o, 0, 1) * 255) / 255
            rows[n]["psnr_rgb"][img_name] = round(psnr(o8, clean, 1.0), 3)
            rows[n]["seconds"] += secs
    return list(rows.values())


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Immerkær's fast noise estimate (1996), averaged over channels: a Laplacian-difference
    mask cancels smooth image content; the mean absolute response scales to sigma.
    (skimage's estimate_sigma needs PyWavelets, which darkroom does not depend on.)"""
    from scipy.signal import convolve2d

    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    h, w = img.shape[:2]
    sigmas = [np.abs(convolve2d(img[..., c], mask, mode="valid")).sum() * np.sqrt(np.pi / 2) / (6 * (h - 2) * (w - 2)) for c in range(img.shape[2])]
    return float(np.mean(sigmas))


def finish(row: dict, key: str) -> dict:
    vals = list(row[key].values())
    row["mean_psnr"] = round(float(np.mean(vals)), 3)
    row["images_per_s"] = round(len(vals) / row["seconds"], 3) if row["seconds"] > 0 else None
    row["seconds"] = round(row["seconds"], 3)
    return row


def table(rows: list[dict]) -> str:
    head = "| task | method | " + " | ".join(EVAL_IMAGES) + " | mean PSNR (dB) | CPU images/s |"
    lines = [head, "|" + "---|" * (len(EVAL_IMAGES) + 4)]
    for r in rows:
        per = r.get("psnr_y") or r.get("psnr_rgb")
        ips = "–" if r["images_per_s"] is None else f"{r['images_per_s']:.2f}"
        lines.append(f"| {r['task']} | {r['method']} | " + " | ".join(f"{per[n]:.2f}" for n in EVAL_IMAGES) + f" | **{r['mean_psnr']:.2f}** | {ips} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "quality.json")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "quality.md", help="markdown page to (re)write; '-' for none")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reg = default_registry()
    t0 = time.perf_counter()
    sr = [finish(r, "psnr_y") for r in sr_rows(reg)]
    dn = [finish(r, "psnr_rgb") for r in denoise_rows(reg)]
    by = {r["method"]: r["mean_psnr"] for r in sr + dn}
    best_nlm = max(by["nlm (sigma given)"], by["nlm (sigma estimated)"])
    targets = {
        "sr_gain_over_bicubic_db": round(by["darkroom-sr-x4"] - by["bicubic"], 3),
        "sr_target_met": by["darkroom-sr-x4"] >= by["bicubic"] + SR_TARGET_DB,
        "denoise_gain_over_best_nlm_db": round(by["darkroom-denoise"] - best_nlm, 3),
        "denoise_target_met": by["darkroom-denoise"] >= best_nlm + DN_TARGET_DB,
    }
    result = {
        "command": COMMAND,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "held_out_images": list(EVAL_IMAGES),
        "sigma": SIGMA,
        "seed": SEED,
        "weights_sha256": {n: reg.get(n).weights.sha256 for n in ("darkroom-sr-x4", "darkroom-denoise")},
        "machine": {"torch": torch.__version__, "threads": args.threads, "nproc": os.cpu_count(),
                    "cpu": platform.processor() or platform.machine(), "load_average": list(os.getloadavg())},
        "rows": sr + dn,
        "targets": targets,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    md = table(sr + dn)
    print(md)
    print(json.dumps(targets))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if str(args.doc) != "-":
        args.doc.write_text(doc(md, result))
    return result


def training(result: dict) -> str:
    """How the evaluated weights were trained, from their safetensors metadata."""
    from safetensors import safe_open

    from models.weights import package_file

    lines = ["| model | parameters | steps (batch × patch) | training CPU time | final loss | trained |", "|---|---|---|---|---|---|"]
    reg = default_registry()
    for name in ("darkroom-sr-x4", "darkroom-denoise"):
        with safe_open(str(package_file(reg.get(name).weights.uri)), "pt") as fh:
            meta, params = fh.metadata(), sum(fh.get_tensor(k).numel() for k in fh.keys())
        lines.append(f"| {name} | {params:,} | {meta['steps']} ({meta['batch']} × {meta['patch']}²) | {meta['cpu_seconds']} s, 1 thread "
                     f"| {meta['final_loss']} ({meta['loss']}) | {meta['date'][:16]} |")
    return "Training (from the weights files' metadata; data: " + meta["data"] + "):\n\n" + "\n".join(lines)


def doc(md: str, result: dict) -> str:
    t = result["targets"]
    yes = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    caveat = "" if t["sr_target_met"] and t["denoise_target_met"] else (
        "A target marked *not met* is not met by the shipped weights. They come from short CPU training\n"
        "runs (the training table: minutes on one thread); longer training is the first thing to try.\n\n"
    )
    return f"""# Quality of darkroom's own models

Measured by `{result['command']}` on {result['date'][:10]} ({result['machine']['nproc']} CPU cores shared with
other jobs, torch {result['machine']['torch']}, {result['machine']['threads']} thread); the raw numbers are in
`benchmarks/results/quality.json`.

Held-out images: scikit-image's `{"`, `".join(result['held_out_images'])}` (and `cat`, the same photo as
`chelsea`). They were never used for training: the models were trained only on other
`skimage.data` images and synthetic drawings (`models/training/common.py`, `TRAIN_IMAGES`).

* **sr-x4**: the image is shrunk ×4 with darkroom's antialiased bicubic and rounded to 8 bits, then
  enlarged back; PSNR on the Y channel (BT.601) with a 4-pixel border shaved.
* **denoise-sigma25**: Gaussian noise with sigma 25/255 (unclipped, seed {result['seed']}); PSNR on RGB.
  Non-local means is scikit-image's `denoise_nl_means` (fast mode, 5×5 patches, 13×13 search,
  h = 0.8·sigma) run twice: with the true sigma given, and with sigma estimated by Immerkær's
  fast noise estimate (skimage's `estimate_sigma` needs PyWavelets, not a darkroom dependency).
  Its images/s is scikit-image's own (numpy/Cython, single-threaded).
* CPU images/s: images per second of process CPU time (the machine is shared, so wall time would
  measure the neighbours), one thread, inference only, model load excluded. Sizes: 512×512,
  400×600, 300×451 (SR: 300×448, the output size; inputs are a quarter on each side).

{training(result)}

{md}

Targets: darkroom-sr-x4 ≥ bicubic + 1.0 dB — {yes(t['sr_target_met'])} (gain {t['sr_gain_over_bicubic_db']:+.2f} dB);
darkroom-denoise ≥ the better non-local means + 1.0 dB — {yes(t['denoise_target_met'])} (gain {t['denoise_gain_over_best_nlm_db']:+.2f} dB).

{caveat}Three images are a small sample: these numbers show the models work as intended on unseen
photos; they are not a comparison with published results on standard benchmark sets.
"""


if __name__ == "__main__":
    main()
