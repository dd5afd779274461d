"""Measured quality of darkroom's own models on held-out images (never used in training).

×4 super-resolution: each held-out image (cropped to a multiple of 4) is shrunk ×4 with
darkroom's antialiased bicubic and rounded to 8 bits — the degradation the model was trained
for — then enlarged by darkroom-sr-x4, bicubic and Lanczos-3. PSNR on the Y channel
(BT.601, 8-bit outputs), 4-pixel border shaved.

Denoising: additive Gaussian noise, sigma = 25/255, unclipped, fixed seed; darkroom-denoise
against scikit-image's non-local means (fast mode, 5×5 patches, 13×13 search, h = 0.8·sigma),
once given the true sigma and once with sigma estimated from the noisy image
(Immerkær's method, see estimate_noise_sigma). PSNR on RGB, 8-bit outputs, no border shaved.

Colorization: each held-out image is turned gray as an 8-bit gray file would be (BT.601 luma,
rounded: Pillow's "L"), given to darkroom-colorize as three equal channels (what the engine
does with a gray file), and compared in colour with the original: PSNR on RGB, and the RMS
error of the chroma planes (Cb, Cr, 0–255 scale). The baseline is the gray image itself.

Inpainting: a fixed hole mask per image (models.training.train_inpaint.hole_mask: scratches,
boxes, ellipses over 15% of the image, seeded), holes filled by darkroom-inpaint, by the
per-channel mean of the known pixels, by the push-pull fill alone (darkroom-inpaint's first
stage, no network) and by scikit-image's biharmonic inpainting (the classical method; numpy,
single-threaded). PSNR on RGB over the whole image (known pixels are exact for every
method) and, in a second table, over the holes alone.

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
CZ_TARGET_DB = 1.0  # darkroom-colorize over the gray image
IP_TARGET_DB = 0.0  # darkroom-inpaint over biharmonic (it must beat the classical method)
HOLE_COVERAGE = 0.15
COMMAND = ".venv/bin/python benchmarks/quality.py"
TRAINED = ("darkroom-sr-x4", "darkroom-denoise", "darkroom-colorize", "darkroom-inpaint")


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
    methods = {
        "darkroom-sr-x4": reg.build("darkroom-sr-x4"),
        "bicubic": reg.build("bicubic", {"scale": 4}),
        "lanczos": reg.build("lanczos", {"scale": 4}),
    }
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


def luma8(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 in [0, 1] → H×W×3 gray (three equal channels), as an 8-bit gray file holds it."""
    y = np.round(rgb @ np.array([0.299, 0.587, 0.114]) * 255) / 255
    return np.repeat(y[..., None], 3, axis=2)


def chroma_rmse(out: np.ndarray, ref: np.ndarray) -> float:
    """RMS difference of the Cb and Cr planes (full-range BT.601, 0–255 scale)."""
    m = np.array([[-0.168736, 0.5], [-0.331264, -0.418688], [0.5, -0.081312]])
    return float(np.sqrt(np.mean(((out - ref) @ m * 255) ** 2)))


def colorize_rows(reg) -> list[dict]:
    model = reg.build("darkroom-colorize")
    names = ["gray input", "darkroom-colorize"]
    rows = {n: {"task": "colorize", "method": n, "psnr_rgb": {}, "chroma_rmse": {}, "seconds": 0.0} for n in names}
    for img_name in EVAL_IMAGES:
        ref = np.round(sample_image(img_name).astype(np.float64) * 255) / 255
        gray = luma8(ref)
        out, secs = run_module(model.module, to_t(gray))
        for n, (o, s) in {"gray input": (gray, 0.0), "darkroom-colorize": (to_np(out), secs)}.items():
            rows[n]["psnr_rgb"][img_name] = round(psnr(o, ref, 1.0), 3)
            rows[n]["chroma_rmse"][img_name] = round(chroma_rmse(o, ref), 3)
            rows[n]["seconds"] += s
    return list(rows.values())


def inpaint_rows(reg) -> list[dict]:
    from skimage.restoration import inpaint_biharmonic

    from models.darkroom_inpaint import pushpull_fill
    from models.training.train_inpaint import hole_mask

    model = reg.build("darkroom-inpaint")
    names = ["mean fill", "push-pull fill", "biharmonic (skimage)", "darkroom-inpaint"]
    rows = {
        n: {
            "task": f"inpaint-{int(HOLE_COVERAGE * 100)}%",
            "method": n,
            "psnr_rgb": {},
            "psnr_holes": {},
            "seconds": 0.0,
        }
        for n in names
    }
    for i, img_name in enumerate(EVAL_IMAGES):
        ref = np.round(sample_image(img_name).astype(np.float64) * 255) / 255
        holes = hole_mask(
            torch.Generator().manual_seed(SEED + i), *ref.shape[:2], coverage=(HOLE_COVERAGE, HOLE_COVERAGE)
        ).numpy()
        damaged = np.where(holes[..., None], 0.0, ref)
        known = torch.from_numpy(~holes).float()[None, None]
        outs = {}
        t = time.process_time()
        outs["mean fill"] = (np.where(holes[..., None], ref[~holes].mean(axis=0), ref), time.process_time() - t)
        filled, secs = run_module(lambda x, known=known: pushpull_fill(x, known), to_t(damaged))
        outs["push-pull fill"] = (to_np(filled), secs)
        t = time.process_time()
        outs["biharmonic (skimage)"] = (
            inpaint_biharmonic(damaged, holes, channel_axis=-1, split_into_regions=True),
            time.process_time() - t,
        )
        out, secs = run_module(model.module, torch.cat([to_t(damaged), known], dim=1))
        outs["darkroom-inpaint"] = (to_np(out), secs)
        for n, (o, secs) in outs.items():
            o8 = np.round(np.clip(o, 0, 1) * 255) / 255
            rows[n]["psnr_rgb"][img_name] = round(psnr(o8, ref, 1.0), 3)
            rows[n]["psnr_holes"][img_name] = round(psnr(o8[holes], ref[holes], 1.0), 3)
            rows[n]["seconds"] += secs
    return list(rows.values())


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Immerkær's fast noise estimate (1996), averaged over channels: a Laplacian-difference
    mask cancels smooth image content; the mean absolute response scales to sigma.
    (skimage's estimate_sigma needs PyWavelets, which darkroom does not depend on.)"""
    from scipy.signal import convolve2d

    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    h, w = img.shape[:2]
    sigmas = [
        np.abs(convolve2d(img[..., c], mask, mode="valid")).sum() * np.sqrt(np.pi / 2) / (6 * (h - 2) * (w - 2))
        for c in range(img.shape[2])
    ]
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
        lines.append(
            f"| {r['task']} | {r['method']} | "
            + " | ".join(f"{per[n]:.2f}" for n in EVAL_IMAGES)
            + f" | **{r['mean_psnr']:.2f}** | {ips} |"
        )
    return "\n".join(lines)


def side_table(rows: list[dict], key: str, what: str) -> str:
    """Per-image values of a second metric (``key``) with their mean."""
    lines = [
        "| task | method | " + " | ".join(EVAL_IMAGES) + f" | mean {what} |",
        "|" + "---|" * (len(EVAL_IMAGES) + 3),
    ]
    for r in rows:
        per = r[key]
        mean = float(np.mean(list(per.values())))
        lines.append(
            f"| {r['task']} | {r['method']} | "
            + " | ".join(f"{per[n]:.2f}" for n in EVAL_IMAGES)
            + f" | **{mean:.2f}** |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "quality.json")
    ap.add_argument(
        "--doc", type=Path, default=REPO / "docs" / "quality.md", help="markdown page to (re)write; '-' for none"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reg = default_registry()
    t0 = time.perf_counter()
    sr = [finish(r, "psnr_y") for r in sr_rows(reg)]
    dn = [finish(r, "psnr_rgb") for r in denoise_rows(reg)]
    cz = [finish(r, "psnr_rgb") for r in colorize_rows(reg)]
    ip = [finish(r, "psnr_rgb") for r in inpaint_rows(reg)]
    by = {r["method"]: r["mean_psnr"] for r in sr + dn + cz + ip}
    best_nlm = max(by["nlm (sigma given)"], by["nlm (sigma estimated)"])
    targets = {
        "sr_gain_over_bicubic_db": round(by["darkroom-sr-x4"] - by["bicubic"], 3),
        "sr_target_met": by["darkroom-sr-x4"] >= by["bicubic"] + SR_TARGET_DB,
        "denoise_gain_over_best_nlm_db": round(by["darkroom-denoise"] - best_nlm, 3),
        "denoise_target_met": by["darkroom-denoise"] >= best_nlm + DN_TARGET_DB,
        "colorize_gain_over_gray_db": round(by["darkroom-colorize"] - by["gray input"], 3),
        "colorize_target_met": by["darkroom-colorize"] >= by["gray input"] + CZ_TARGET_DB,
        "inpaint_gain_over_mean_fill_db": round(by["darkroom-inpaint"] - by["mean fill"], 3),
        "inpaint_gain_over_biharmonic_db": round(by["darkroom-inpaint"] - by["biharmonic (skimage)"], 3),
        "inpaint_target_met": by["darkroom-inpaint"] > by["biharmonic (skimage)"] + IP_TARGET_DB,
    }
    result = {
        "command": COMMAND,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "held_out_images": list(EVAL_IMAGES),
        "sigma": SIGMA,
        "seed": SEED,
        "hole_coverage": HOLE_COVERAGE,
        "weights_sha256": {n: reg.get(n).weights.sha256 for n in TRAINED},
        "machine": {
            "torch": torch.__version__,
            "threads": args.threads,
            "nproc": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "load_average": list(os.getloadavg()),
        },
        "rows": sr + dn + cz + ip,
        "targets": targets,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    md = table(sr + dn + cz + ip)
    md += "\n\nChroma RMS error (Cb, Cr; 0–255, lower is better):\n\n" + side_table(cz, "chroma_rmse", "RMSE")
    md += "\n\nInpainting, PSNR over the hole pixels only (dB):\n\n" + side_table(ip, "psnr_holes", "PSNR (dB)")
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

    lines = [
        "| model | parameters | steps (batch × patch) | training CPU time | final loss | trained |",
        "|---|---|---|---|---|---|",
    ]
    reg = default_registry()
    data = {}
    for name in TRAINED:
        with safe_open(str(package_file(reg.get(name).weights.uri)), "pt") as fh:
            meta, params = fh.metadata(), sum(fh.get_tensor(k).numel() for k in fh.keys())
        closed_form = meta["batch"] == "all pixels"
        steps = "closed form, all pixels" if closed_form else f"{meta['steps']} ({meta['batch']} × {meta['patch']}²)"
        if "steps_this_run" in meta and "batch_before" in meta:  # continued from earlier weights: both stages
            steps = (
                f"{meta['steps']} = {meta['steps_before']} ({meta['batch_before']} × {meta['patch_before']}²) "
                f"+ {meta['steps_this_run']} ({meta['batch']} × {meta['patch']}²)"
            )
        lines.append(
            f"| {name} | {params:,} | {steps} | {meta['cpu_seconds']} s, 1 thread "
            f"| {meta['final_loss']} ({meta['loss']}) | {meta['date'][:16]} |"
        )
        data.setdefault(meta["data"], []).append(name)
    sources = "; ".join(f"{', '.join(names)}: {d}" for d, names in data.items())
    return "Training (from the weights files' metadata; data — " + sources + "):\n\n" + "\n".join(lines)


def colorize_limits() -> str:
    """What the colorizer does on images it never saw from its own training pool (its metadata)."""
    from safetensors import safe_open

    from models.weights import package_file

    with safe_open(str(package_file(default_registry().get("darkroom-colorize").weights.uri)), "pt") as fh:
        loo = (fh.metadata() or {}).get("leave_one_out_gain_db")
    if not loo:
        return ""
    gains = [float(part.rsplit(" ", 1)[1]) for part in loo.split(", ")]
    return f"""darkroom-colorize is a luma→chroma curve (10 numbers), not a network: residual U-Nets trained
on top of it (114k and 8k parameters) learned the seven colour training images by heart and made
an unseen photo worse (`models/darkroom_colorize.py`). The curve's own limit shows when each colour
training image is left out of the fit in turn (`train_colorize.py --leave-one-out`): gain over gray
{loo} (dB) — mean {np.mean(gains):+.2f} dB. It learned a warm cast (orange mid-tones): that suits
the three held-out photos (a warm-lit cat, coffee, a face) and the orange retina, and it makes
cool or neutral images (rocket's sky, the motorcycle, hubble, the micrograph) worse than
leaving them gray. Seven colour images, two of them photographs, cannot teach what colour
objects are.

"""


def inpaint_note(result: dict) -> str:
    """Where darkroom-inpaint's gain comes from, from the measured rows."""
    rows = {r["method"]: r for r in result["rows"] if r["task"].startswith("inpaint")}
    fill, net, bih = rows["push-pull fill"], rows["darkroom-inpaint"], rows["biharmonic (skimage)"]
    losses = [n for n in EVAL_IMAGES if net["psnr_rgb"][n] < bih["psnr_rgb"][n]]
    where = f" Biharmonic is better on {', '.join(losses)} (smooth, slowly varying regions)." if losses else ""
    return (
        f"darkroom-inpaint's gain over biharmonic comes mostly from its first stage, the multigrid membrane fill "
        f"({fill['mean_psnr'] - bih['mean_psnr']:+.2f} dB); the U-Net adds "
        f"{net['mean_psnr'] - fill['mean_psnr']:+.2f} dB "
        f"on whole images (more where edges cross holes: tests/models/test_trained.py measures +2.25 dB in the holes "
        f"of a 128² crop of coffee).{where}\n\n"
    )


def doc(md: str, result: dict) -> str:
    t = result["targets"]
    yes = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    caveat = (
        ""
        if all(v for k, v in t.items() if k.endswith("_target_met"))
        else (
            "A target marked *not met* is not met by the shipped weights. They come from short CPU training\n"
            "runs (the training table: minutes on one thread); longer training is the first thing to try.\n\n"
        )
    )
    return f"""# Quality of darkroom's own models

Measured by `{result["command"]}` on {result["date"][:10]} ({result["machine"]["nproc"]} CPU cores shared with
other jobs, torch {result["machine"]["torch"]}, {result["machine"]["threads"]} thread); the raw numbers are in
`benchmarks/results/quality.json`.

Held-out images: scikit-image's `{"`, `".join(result["held_out_images"])}` (and `cat`, the same photo as
`chelsea`). They were never used for training: the models were trained only on other
`skimage.data` images and synthetic drawings (`models/training/common.py`, `TRAIN_IMAGES`;
darkroom-colorize only on the colour ones among them, `COLOUR_TRAIN_IMAGES` in
`models/training/train_colorize.py`).

* **sr-x4**: the image is shrunk ×4 with darkroom's antialiased bicubic and rounded to 8 bits, then
  enlarged back; PSNR on the Y channel (BT.601) with a 4-pixel border shaved.
* **denoise-sigma25**: Gaussian noise with sigma 25/255 (unclipped, seed {result["seed"]}); PSNR on RGB.
  Non-local means is scikit-image's `denoise_nl_means` (fast mode, 5×5 patches, 13×13 search,
  h = 0.8·sigma) run twice: with the true sigma given, and with sigma estimated by Immerkær's
  fast noise estimate (skimage's `estimate_sigma` needs PyWavelets, not a darkroom dependency).
  Its images/s is scikit-image's own (numpy/Cython, single-threaded).
* **colorize**: the image made gray as an 8-bit gray file holds it (BT.601 luma, rounded), given
  to darkroom-colorize as three equal channels, compared in colour with the original: PSNR on RGB
  and the RMS error of the chroma planes (Cb, Cr). The baseline is the gray image itself.
* **inpaint-{int(result["hole_coverage"] * 100)}%**: a fixed seeded hole mask per image (`hole_mask` in
  `models/training/train_inpaint.py`: scratches, boxes, ellipses over {int(result["hole_coverage"] * 100)}% of the
image);
  PSNR on RGB over the whole image (known pixels are exact for every method) and over the holes
  alone. Baselines: the per-channel mean of the known pixels; the push-pull fill alone
  (darkroom-inpaint's first stage, no network); scikit-image's `inpaint_biharmonic` (the classical
  method; numpy, single-threaded, split into regions).
* CPU images/s: images per second of process CPU time (the machine is shared, so wall time would
  measure the neighbours), one thread, inference only, model load excluded. Sizes: 512×512,
  400×600, 300×451 (SR: 300×448, the output size; inputs are a quarter on each side).

{training(result)}

{md}

Targets: darkroom-sr-x4 ≥ bicubic + 1.0 dB — {yes(t["sr_target_met"])} (gain {t["sr_gain_over_bicubic_db"]:+.2f} dB);
darkroom-denoise ≥ the better non-local means + 1.0 dB — {yes(t["denoise_target_met"])} (gain
{t["denoise_gain_over_best_nlm_db"]:+.2f} dB);
darkroom-colorize ≥ the gray image + {CZ_TARGET_DB:.1f} dB — {yes(t["colorize_target_met"])} (gain
{t["colorize_gain_over_gray_db"]:+.2f} dB);
darkroom-inpaint > biharmonic — {yes(t["inpaint_target_met"])} (gain {t["inpaint_gain_over_biharmonic_db"]:+.2f} dB;
over mean fill {t["inpaint_gain_over_mean_fill_db"]:+.2f} dB).

{colorize_limits()}{inpaint_note(result)}{caveat}Three images are a small sample: these numbers show the models work
as intended on unseen
photos; they are not a comparison with published results on standard benchmark sets.
"""


if __name__ == "__main__":
    main()
