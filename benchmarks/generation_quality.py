"""Measured quality of darkroom's generators: are the samples recognisable digits, of every class, and new?

Every registry entry of task ``generation`` that ships weights is run; an entry whose params
offer a choice of ``sampler`` is run once per sampler, at its default steps (for
darkroom-ddpm-digits: ancestral DDPM over all 1000 steps, and DDIM over 50). Sample i of
``--samples`` is seeded by ``sample_generator(--seed, i)``; class-conditional models are asked
for class i mod 10. The scores:

* **confident**: share of samples the digits classifier (models/digits_classifier.py; its
  accuracy on the 297 held-back digits is in the output) gives a top probability > 0.9.
  Target ≥ 90 %.
* **classes**: histogram of the classifier's top class; target: every class ≥ 5 %.
* **label agrees** (class-conditional models): share whose top class is the class asked for.
* **colour agrees** (3-channel models): share whose stroke colour (the mean colour of pixels
  whose max channel is > 0.5, scaled to max component 1) is nearest to the palette colour of its
  top class.
* **novelty**: each sample's L2 distance (over 3×32×32 values in [0, 1]) to its nearest training
  digit, next to the same distance for the held-back digits — real digits that no model saw. A
  generator that reproduces its training set has distances far below the held-back ones;
  *copies* is the share of samples nearer to a training digit than the nearest held-back digit
  ever is (target: about 0).
* **speed**: images per second (wall) and per CPU-second (process time, so a busy machine
  distorts it less), torch threads as given, model loading excluded.

    .venv/bin/python benchmarks/generation_quality.py     # table; benchmarks/results/generation_quality.json;
                                                           # the table section of docs/generation.md; grids of
                                                           # the first 40 samples of each row in docs/images/
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import time
import typing
from pathlib import Path

import torch
from torch.nn import functional as F
from torchvision.utils import save_image

from models import default_registry, digits_classifier
from models.diffusion import sample_generator
from models.training import digits

REPO = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python benchmarks/generation_quality.py"
CONFIDENT_P = 0.9
CONFIDENT_TARGET = 0.90
CLASS_SHARE_TARGET = 0.05
GRID_SAMPLES = 40
BEGIN, END = "<!-- generation-quality:begin -->", "<!-- generation-quality:end -->"


def variants(entry, micro_batch: int, steps: int | None = None) -> list[dict]:
    """Params to benchmark an entry with: one set per ``sampler`` choice (defaults otherwise), and
    the benchmark's micro-batch (and ``steps``, if given) where the entry takes them."""
    fields = entry.params.model_fields
    base = {"micro_batch": micro_batch} if "micro_batch" in fields else {}
    if steps is not None and "steps" in fields:
        base["steps"] = steps
    choices = typing.get_args(fields["sampler"].annotation) if "sampler" in fields else ()
    out = [{**base, "sampler": s} for s in choices] or [base]
    if "temperature" in fields:  # the trained distribution (1.0) next to the default temperature
        out += [{**v, "temperature": 1.0} for v in out]
    return out


def sampler_label(row: dict) -> str:
    """The sampler, with the latent temperature for generators that take one."""
    t = row.get("temperature")
    return row["sampler"] if t is None else f"{row['sampler']}, temperature {t:g}"


def generate(model, n: int, seed: int, batch: int) -> tuple[torch.Tensor, list[int] | None, float, float]:
    """(N×C×H×W samples in [0, 1], the labels asked for or None, wall seconds, CPU seconds)."""
    labels = [i % model.num_classes for i in range(n)] if model.num_classes else None
    out, wall, cpu = [], 0.0, 0.0
    for start in range(0, n, batch):
        idx = range(start, min(n, start + batch))
        gens = [sample_generator(seed, i) for i in idx]
        w0, c0 = time.perf_counter(), time.process_time()
        out.append(model.sample(gens, None if labels is None else [labels[i] for i in idx], torch.device("cpu")))
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        print(f"  {model.name} {model.sampler}: {idx.stop}/{n} samples, {wall:.0f}s", flush=True)
    return torch.cat(out), labels, wall, cpu


def nearest_l2(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(N,) L2 distance of each row of x (N×…) to its nearest row of reference (M×…), in float64."""
    return torch.cdist(x.flatten(1).double(), reference.flatten(1).double()).min(dim=1).values


def stroke_colour_class(images: torch.Tensor) -> torch.Tensor:
    """(N,) index of the palette colour nearest to each image's mean stroke colour (-1: no stroke),
    the colour scaled to max component 1 as the palette is (strokes fade at their edges)."""
    mask = (digits.shape_channel(images) > 0.5).float()
    count = mask.sum(dim=(1, 2, 3))
    mean = (images * mask).sum(dim=(2, 3)) / count.clamp(min=1).unsqueeze(1)
    mean = mean / mean.amax(dim=1, keepdim=True).clamp(min=1e-6)
    nearest = torch.cdist(mean, digits.PALETTE).argmin(dim=1)
    return torch.where(count > 0, nearest, torch.full_like(nearest, -1))


def quantiles(d: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(d, torch.tensor([0.05, 0.5], dtype=d.dtype))
    return {"min": round(float(d.min()), 3), "p5": round(float(q[0]), 3), "median": round(float(q[1]), 3)}


def score(
    images: torch.Tensor, labels: list[int] | None, classifier, train: digits.Digits, held_nn: torch.Tensor
) -> dict:
    probs = digits_classifier.probabilities(classifier, images)
    top_p, top = probs.max(dim=1)
    share = torch.bincount(top, minlength=10).double() / len(top)
    coloured = images.shape[1] == 3
    reference = train.coloured() if coloured else train.images
    nn = nearest_l2(images, reference)
    row = {
        "confident": round(float((top_p > CONFIDENT_P).double().mean()), 4),
        "class_share": [round(float(s), 4) for s in share],
        "min_class_share": round(float(share.min()), 4),
        "label_agrees": None if labels is None else round(float((top == torch.tensor(labels)).double().mean()), 4),
        "colour_agrees": round(float((stroke_colour_class(images) == top).double().mean()), 4) if coloured else None,
        "nearest_train_l2": quantiles(nn),
        "copies": round(float((nn < held_nn.min()).double().mean()), 4),
    }
    row["targets_met"] = row["confident"] >= CONFIDENT_TARGET and row["min_class_share"] >= CLASS_SHARE_TARGET
    return row


def table(rows: list[dict], held: dict[str, float]) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    lines = [
        "| model | sampler | steps | confident (> 0.9) | smallest class | label agrees | colour agrees "
        "| nearest-train L2, median (p5) | copies | images/s (wall) | images per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        nn = r["nearest_train_l2"]
        lines.append(
            f"| {r['model']} | {sampler_label(r)} | {r['steps']} | **{pct(r['confident'])}** | "
            f"{pct(r['min_class_share'])} "
            f"| {pct(r['label_agrees'])} | {pct(r['colour_agrees'])} | {nn['median']:.2f} ({nn['p5']:.2f}) | "
            f"{pct(r['copies'])} "
            f"| {r['images_per_s']:.2f} | {r['images_per_cpu_s']:.2f} |"
        )
    lines.append(
        f"| *held-back digits (real, never trained on)* | | | | | | | {held['median']:.2f} ({held['p5']:.2f}) | min "
        f"{held['min']:.2f} | | |"
    )
    return "\n".join(lines)


def histogram(rows: list[dict]) -> str:
    lines = ["| model | sampler | " + " | ".join(str(c) for c in range(10)) + " |", "|---|---|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} | {sampler_label(r)} | " + " | ".join(f"{100 * s:.1f}" for s in r["class_share"]) + " |"
        )
    return "\n".join(lines)


def update_doc(path: Path, md: str) -> None:
    """Replace the generated section of ``path`` (between the BEGIN and END markers) with ``md``."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} … {END} section to update")
    path.write_text(
        re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{md}\n{END}", text, flags=re.S)
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50, help="samples per sample() call (and the DDPM micro-batch)")
    ap.add_argument("--seed", type=int, default=0, help="job seed of sample_generator")
    ap.add_argument(
        "--steps", type=int, help="override every sampler's default steps (quick checks; the table uses the defaults)"
    )
    ap.add_argument(
        "--models", default="", help="comma-separated entry names (default: every generation entry with weights)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "generation_quality.json")
    ap.add_argument(
        "--doc",
        type=Path,
        default=REPO / "docs" / "generation.md",
        help="page whose table section to rewrite; '-' for none",
    )
    ap.add_argument(
        "--grids", type=Path, default=REPO / "docs" / "images", help="folder for sample grids; '-' for none"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    reg = default_registry()
    wanted = {n for n in args.models.split(",") if n}
    entries = [
        e
        for e in reg.entries()
        if e.task == "generation" and e.weights is not None and (not wanted or e.name in wanted)
    ]
    train, held_back = digits.load(32)
    classifier = digits_classifier.build()
    held_probs = digits_classifier.probabilities(classifier, held_back.coloured())
    classifier_accuracy = float((held_probs.argmax(1) == held_back.labels).double().mean())
    held_nn = nearest_l2(held_back.coloured(), train.coloured())
    rows = []
    for entry in entries:
        for params in variants(entry, args.batch, args.steps):
            model = reg.build(entry.name, params)
            images, labels, wall, cpu = generate(model, args.samples, args.seed, args.batch)
            assert images.shape == (args.samples, *model.shape), images.shape
            row = {
                "model": entry.name,
                "sampler": model.sampler,
                "steps": model.steps,
                "params": params,
                "temperature": getattr(entry.validate_params(params), "temperature", None),
                "weights_sha256": model.weights_sha256,
                "samples": args.samples,
                **score(images, labels, classifier, train, held_nn),
                "images_per_s": round(args.samples / wall, 3),
                "images_per_cpu_s": round(args.samples / cpu, 3),
            }
            rows.append(row)
            if str(args.grids) != "-":
                args.grids.mkdir(parents=True, exist_ok=True)
                suffix = "" if row["temperature"] is None else f"-t{row['temperature']:g}"
                grid = args.grids / f"samples-{entry.name}-{model.sampler}{suffix}.png"
                save_image(
                    F.interpolate(images[:GRID_SAMPLES], scale_factor=2, mode="nearest"),
                    grid,
                    nrow=10,
                    padding=2,
                    pad_value=0.25,
                )
                row["grid"] = str(grid.relative_to(REPO)) if grid.is_relative_to(REPO) else str(grid)
            print(
                json.dumps(
                    {k: row[k] for k in ("model", "sampler", "steps", "confident", "min_class_share", "copies")}
                ),
                flush=True,
            )
    held = quantiles(held_nn)
    result = {
        "command": COMMAND,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seed": args.seed,
        "samples": args.samples,
        "classifier": {
            "name": digits_classifier.NAME,
            "weights_sha256": digits_classifier.WEIGHTS.sha256,
            "held_back_accuracy": round(classifier_accuracy, 4),
            "held_back_confident": round(float((held_probs.max(1).values > CONFIDENT_P).double().mean()), 4),
        },
        "held_back_nearest_train_l2": held,
        "targets": {"confident": CONFIDENT_TARGET, "min_class_share": CLASS_SHARE_TARGET},
        "machine": {
            "torch": torch.__version__,
            "threads": args.threads,
            "nproc": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    c = result["classifier"]
    md = (
        f"Measured by `{COMMAND}` on {result['date'][:10]}: {args.samples} samples per row (seed {args.seed}), "
        f"torch {torch.__version__}, {args.threads} thread, {os.cpu_count()} CPU cores shared with other jobs "
        f"(load average {result['machine']['load_average'][0]}). The classifier: {100 * c['held_back_accuracy']:.1f} "
        "% accurate "
        f"on the 297 held-back digits, {100 * c['held_back_confident']:.1f} % of them with top probability > 0.9.\n\n"
        + table(rows, held)
        + "\n\nClass histogram (% of samples per top class):\n\n"
        + histogram(rows)
    )
    print(md)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if str(args.doc) != "-":
        update_doc(args.doc, md)
    return result


if __name__ == "__main__":
    main()
