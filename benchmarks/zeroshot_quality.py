"""Measured quality of zero-shot restoration with the digits DDPM prior (models/zeroshot.py).

Data: the first ``--n`` held-back digits of models/training/digits.py (never trained on by any
project model), class-coloured, 32×32, rounded to 8 bits. Every method goes through the registry
(``repaint``, ``ddnm-sr``, ``ddnm-colorize`` with ``prior=--prior``), on the CPU, in batches of
``--batch``; outputs are rounded to 8 bits as the engine writes them, then scored:

* inpainting — a centred 12×12 hole (14 % of the pixels); PSNR / MSE over the hole's pixels
  (RGB); baseline: the hole filled with the mean colour of the image's known pixels;
* ×4 and ×8 super-resolution — 32 → 8 (→ 4) by average pooling (the degradation DDNM assumes),
  8-bit, → 32; PSNR / MSE over the whole image; baseline: darkroom's bicubic. ×4 is nearly
  well-posed on this data: the 32×32 digits are bilinear ×4 enlargements of the 8×8 originals,
  and pooling ∘ bilinear is an invertible 64×64 map (condition number 3.7), so a prior that has
  learnt that structure recovers them almost exactly; ×8 (16 numbers per 64) is not;
* colorization — the channel mean (8-bit gray) → RGB; PSNR / MSE over the whole image;
  baseline: the gray replicated to three channels; plus "hue accuracy": the share of digits whose
  stroke colour is nearest their own class's palette colour (chance ≈ 10 %).

"known err" is the largest deviation, in 8-bit levels, from what the input fixes: the unmasked
pixels (inpainting), the block means (SR), the channel means (colorization) — measured on the
float output of the model (``model``) and after 8-bit rounding (``8-bit``: rounding alone moves a
block mean by up to 0.5). Speed: images per second of process CPU time (busy shared machines
distort wall time), torch threads as given, model loading excluded; wall-clock rate alongside.

    .venv/bin/python benchmarks/zeroshot_quality.py
    # table; benchmarks/results/zeroshot_quality.json; docs/zeroshot.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import default_registry
from models.diffusers_folder import resolve_folder
from models.resample import resize
from models.zeroshot import DEFAULT_PRIOR, gray, pool

REPO = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python benchmarks/zeroshot_quality.py"
HOLE = slice(10, 22)  # centred 12×12 hole in a 32×32 digit
SCALES = (4, 8)  # ×4 is nearly well-posed on these digits (bilinear ×4 enlargements of 8×8 originals); ×8 is not
DOC_START, DOC_END = "<!-- zeroshot-results:start -->", "<!-- zeroshot-results:end -->"


def q8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def scores(out: torch.Tensor, truth: torch.Tensor, region: torch.Tensor) -> dict:
    """MSE and PSNR (peak 1) over the pixels where ``region`` (broadcast to the images) is true."""
    region = region.expand_as(truth)
    mse = float(((out.double() - truth.double())[region] ** 2).mean())
    return {"mse": mse, "psnr": float("inf") if mse == 0 else 10 * float(np.log10(1 / mse))}


def run(model, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, float, float]:
    """(output, CPU seconds, wall seconds) of ``model.module`` over ``x`` in chunks of ``batch``."""
    outs, cpu, wall = [], time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch):
            outs.append(model.module(x[start : start + batch]))
    return torch.cat(outs), time.process_time() - cpu, time.perf_counter() - wall


def row(
    task: str,
    method: str,
    out: torch.Tensor,
    truth: torch.Tensor,
    region: torch.Tensor,
    known_err=None,
    cpu=None,
    wall=None,
) -> dict:
    n = truth.shape[0]
    return {
        "task": task,
        "method": method,
        **scores(q8(out), truth, region),
        "known_err_model": None if known_err is None else round(float(known_err(out)) * 255, 4),
        "known_err_8bit": None if known_err is None else round(float(known_err(q8(out))) * 255, 4),
        "cpu_images_per_s": None if not cpu else round(n / cpu, 3),
        "wall_images_per_s": None if not wall else round(n / wall, 3),
    }


def inpainting(reg, truth, params, batch) -> list[dict]:
    mask = torch.ones(truth.shape[0], 1, *truth.shape[2:])
    mask[:, :, HOLE, HOLE] = 0
    hole = mask == 0
    known_mean = (truth * mask).sum(dim=(2, 3), keepdim=True) / mask.sum(dim=(2, 3), keepdim=True)
    mean_fill = torch.where(hole, known_mean.expand_as(truth), truth)
    model = reg.build("repaint", params)
    out, cpu, wall = run(model, torch.cat([truth, mask], dim=1), batch)
    known = (~hole).expand_as(truth)
    err = lambda o: (o - truth)[known].abs().max()  # noqa: E731
    return [
        row("inpaint 12×12 hole", "mean fill", mean_fill, truth, hole, err),
        row("inpaint 12×12 hole", "repaint", out, truth, hole, err, cpu, wall),
    ]


def super_resolution(reg, truth, params, batch) -> list[dict]:
    rows = []
    size = truth.shape[-1]
    everywhere = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    for scale in SCALES:
        lr = q8(pool(truth, scale))
        err = lambda o, lr=lr, scale=scale: (pool(o, scale) - lr).abs().max()  # noqa: E731
        model = reg.build("ddnm-sr", {**params, "scale": scale})
        out, cpu, wall = run(model, lr, batch)
        task = f"SR ×{scale} ({size // scale}→{size})"
        rows += [
            row(task, "bicubic", resize(lr, size, size, "bicubic"), truth, everywhere, err),
            row(task, "ddnm-sr", out, truth, everywhere, err, cpu, wall),
        ]
    return rows


def hue_accuracy(out: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose stroke colour (the stroke-weighted mean colour, scaled to a largest
    component of 1) is nearest to their own class's palette colour: chance is ~10 %, a gray
    output always reads as class 9's white."""
    from models.training.digits import PALETTE

    w = gray(truth)
    colour = (out * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1e-6)
    colour = colour / colour.amax(dim=1, keepdim=True).clamp_min(1e-6)
    return float((torch.cdist(colour, PALETTE).argmin(dim=1) == labels).float().mean())


def colorization(reg, truth, params, batch, labels) -> list[dict]:
    g = q8(gray(truth))
    everywhere = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    err = lambda o: (gray(o) - g).abs().max()  # noqa: E731
    model = reg.build("ddnm-colorize", params)
    out, cpu, wall = run(model, g.expand(-1, 3, -1, -1), batch)  # a gray file reaches the model as 3 equal channels
    rows = [
        row("colorize", "gray replicated", g.expand(-1, 3, -1, -1), truth, everywhere, err),
        row("colorize", "ddnm-colorize", out, truth, everywhere, err, cpu, wall),
    ]
    for r, o in zip(rows, (g.expand(-1, 3, -1, -1), q8(out))):
        r["hue_accuracy"] = round(hue_accuracy(o, truth, labels), 3)
    return rows


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    lines = [
        "| task | method | PSNR (dB) | MSE | known err, model (8-bit levels) | known err, 8-bit | hue accuracy | CPU "
        "images/s | wall images/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['method']} | **{r['psnr']:.2f}** | {r['mse']:.5f} | "
            f"{_fmt(r['known_err_model'], '.3f')} "
            f"| {_fmt(r['known_err_8bit'], '.3f')} | {_fmt(r.get('hue_accuracy'), '.0%')} | "
            f"{_fmt(r['cpu_images_per_s'], '.2f')} "
            f"| {_fmt(r['wall_images_per_s'], '.2f')} |"
        )
    return "\n".join(lines)


def prior_info(uri: str) -> dict:
    fs, root = resolve_folder(uri)
    info = {"uri": uri, "path": root}
    if fs.exists(f"{root}/training.json"):
        with fs.open(f"{root}/training.json", "r") as fh:
            t = json.load(fh)
        info.update({k: t[k] for k in ("steps", "parameters", "final_loss", "date") if k in t})
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=DEFAULT_PRIOR, help="the DDPM folder (default: the shipped digits prior)")
    ap.add_argument("--n", type=int, default=100, help="held-back digits (≤ 297)")
    ap.add_argument("--batch", type=int, default=25, help="images per model call")
    ap.add_argument(
        "--steps", type=int, default=None, help="override every model's steps (default: the registry defaults)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--tasks", default="inpaint,sr,colorize")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "zeroshot_quality.json")
    ap.add_argument(
        "--doc",
        type=Path,
        default=REPO / "docs" / "zeroshot.md",
        help="page whose results section is rewritten; '-' for none",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from models.training import digits

    held = digits.load(32)[1]
    truth, labels = q8(held.coloured()[: args.n]), held.labels[: args.n]
    reg = default_registry()
    params = {"prior": args.prior, "seed": args.seed, **({"steps": args.steps} if args.steps else {})}
    tasks = {"inpaint": inpainting, "sr": super_resolution, "colorize": colorization}
    rows = []
    for name in args.tasks.split(","):
        rows += tasks[name](reg, truth, params, args.batch, *([labels] if name == "colorize" else []))
        print("\n".join(table(rows).splitlines()[-2:]), flush=True)
    models = {"inpaint": "repaint", "sr": "ddnm-sr", "colorize": "ddnm-colorize"}
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": args.threads,
        },
        "prior": {**prior_info(args.prior), "weights_sha256": reg.get("repaint").weights_sha256({"prior": args.prior})},
        "images": truth.shape[0],
        "batch": args.batch,
        "params": {models[t]: reg.get(models[t]).validate_params(params).model_dump() for t in args.tasks.split(",")},
        "rows": rows,
    }
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if str(args.doc) != "-" and args.doc.exists():
        text = args.doc.read_text()
        if DOC_START in text and DOC_END in text:
            head, rest = text.split(DOC_START, 1)
            args.doc.write_text(
                head + DOC_START + "\n" + results_md(result) + "\n" + DOC_END + rest.split(DOC_END, 1)[1]
            )
            print(f"updated {args.doc}")
    return result


def results_md(result: dict) -> str:
    prior = result["prior"]
    trained = (
        f", {prior['steps']} training steps, {prior['parameters']:,} parameters"
        if "steps" in prior and "parameters" in prior
        else ""
    )
    trained += f"; {prior['note']}" if "note" in prior else ""
    steps = ", ".join(
        f"{m}: {p['steps']} steps" + (f", jumps {p['jumps']}×{p['jump_length']}" if "jumps" in p else "")
        for m, p in result["params"].items()
    )
    return (
        f"Measured {result['date'][:10]} with `{result['command']}` on {result['images']} held-back digits "
        f"({result['machine']['processor']}, {result['machine']['torch_threads']} torch thread(s), batch "
        f"{result['batch']}); "
        f"prior `{prior['uri']}` (weights sha256 `{prior['weights_sha256'][:12]}…`{trained}); {steps}.\n\n"
        + table(result["rows"])
        + "\n"
    )


if __name__ == "__main__":
    main()
