"""Peak memory of one big photo through an x4 model on CPU with tiling (issue 8's big-image target).

A 6000×4000 JPEG (smooth noise + grain, q 90) goes, in a fresh process, through what darkroom's
actor and shard task do with it: ``images.decode`` → ``Chain`` (the job defaults: tile 512,
tile_pad 16, CPU) → ``images.encode`` to PNG. Peak RSS (``ru_maxrss``, the whole process,
torch and the model included) is read after the model and after the encoder, and compared
with the output's bytes (24000 × 16000 × 3 = 1.15 GB for uint8 RGB). Target: peak ≤ 2.5 ×
the output's bytes.

In a darkroom run the two halves happen in two processes (the model actor, then the shard
task that encodes), and the result travels between them through Ray's object store (shared
memory). ``--darkroom`` measures that: the same photo through ``darkroom run`` (one actor,
batch 1, the job defaults otherwise), every process of the run sampled every 0.2 s from
/proc: each process's peak RSS (VmHWM, exact), and the peak of the sum of PSS over all of
them (shared pages counted once), i.e. the machine memory the run needed.

    .venv/bin/python benchmarks/big_image.py                          # darkroom-sr-x4, ~3 CPU-minutes
    .venv/bin/python benchmarks/big_image.py --darkroom               # the same through `darkroom run`, ~3 minutes
    .venv/bin/python benchmarks/big_image.py --model realesr-animevideov3   # ~11 CPU-minutes
    .venv/bin/python benchmarks/big_image.py --width 1500 --height 1000      # quick check

Prints the figures and writes benchmarks/results/big_image.json (big_image_run.json with --darkroom).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import torch
from models import default_registry
from pipeline import images
from pipeline.inference import Chain
path, model_name, tile, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = default_registry().build(model_name)
chain = Chain([model], torch.device("cpu"), batch_size=1, tile=tile, tile_pad=16)
base = peak()
t0 = time.perf_counter()
decoded = images.decode(open(path, "rb").read(), 200_000_000)
[result] = chain([decoded.pixels])
assert result.error is None, result.error
t1 = time.perf_counter()
after_model = peak()
out_bytes = result.pixels.nbytes
del decoded
data = images.encode(result.pixels, None, "png", 95)
t2 = time.perf_counter()
print(json.dumps({"output_shape": list(result.pixels.shape), "output_bytes": out_bytes, "png_bytes": len(data),
                  "rss_after_model_load": base, "peak_rss_after_model": after_model, "peak_rss_after_encode": peak(),
                  "model_s": t1 - t0, "encode_s": t2 - t1, "threads": threads}))
"""


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (a local Ray's GCS, raylet and workers descend from the driver)."""
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def memory_of(pid: int) -> dict | None:
    """Current PSS and peak RSS (VmHWM) in bytes, and the process title, or None once it is gone."""
    try:
        rollup = (Path(f"/proc/{pid}") / "smaps_rollup").read_text()
        status = (Path(f"/proc/{pid}") / "status").read_text()
        argv = (Path(f"/proc/{pid}") / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None

    def kib(text, key):
        return int(next((line.split()[1] for line in text.splitlines() if line.startswith(key + ":")), 0)) * 1024

    return {"pss": kib(rollup, "Pss"), "hwm": kib(status, "VmHWM"), "title": " ".join(Path(a).name for a in argv[:2])}


def measure_darkroom_run(throughput, photo: Path, work: Path, model: str, tile: int) -> dict:
    """``darkroom run`` on the one photo; per-process peak RSS and the peak of the summed PSS."""
    import yaml

    out = work / "out"
    job = {
        "name": "big-image",
        "input": {"uri": str(photo.parent) + "/"},
        "output": {"uri": str(out) + "/", "format": "png"},
        "steps": [{"model": model}],
        "resources": {"actors": 1, "batch_size": 1, "tile": tile},
        "limits": {"max_pixels": 200_000_000},
    }
    (work / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    cmd = [throughput._darkroom_exe(), "run", str(work / "job.yaml"), "--log-format", "json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent, env=throughput._child_env()
    )
    peaks: dict[int, dict] = {}  # pid → the last sample (VmHWM only grows)
    peak_sum = 0
    while proc.poll() is None:
        samples = {pid: m for pid in process_tree(proc.pid) if (m := memory_of(pid)) is not None}
        peak_sum = max(peak_sum, sum(m["pss"] for m in samples.values()))
        for pid, m in samples.items():
            # Ray retitles a worker by what it runs ("ray::process_shard", then "ray::IDLE"): keep the task's.
            busy = m["title"].startswith("ray::") and "IDLE" not in m["title"]
            title = m["title"] if busy or pid not in peaks else peaks[pid]["title"]
            peaks[pid] = m | {"title": title}
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(stderr[-3000:])
    import pyarrow.dataset as pads

    from pipeline import layout

    [row] = (
        pads.dataset(layout.manifest_dir(str(out)), format="parquet")
        .to_table(columns=["status", "width_out", "height_out"])
        .to_pylist()
    )
    assert row["status"] == "ok", row
    width, height = row["width_out"], row["height_out"]
    top = sorted(peaks.values(), key=lambda m: -m["hwm"])[:6]
    return {
        "output_bytes": width * height * 3,
        "output_shape": [height, width, 3],
        "wall_s": time.perf_counter() - t0,
        "peak_sum_pss": peak_sum,
        "processes": [{"title": m["title"][:60], "peak_rss": m["hwm"]} for m in top],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="darkroom-sr-x4", help="an x4 model from the registry")
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--tile", type=int, default=512, help="resources.tile (default: the job default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--darkroom", action="store_true", help="through `darkroom run`: every process of the run measured")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    spec = importlib.util.spec_from_file_location("darkroom_bench_throughput", HERE / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    gib = 2**30
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "in" / "photo.jpg"
        photo.parent.mkdir()
        throughput.smooth_noise(args.width, args.height, seed=7).save(photo, "JPEG", quality=90)
        if args.darkroom:
            r = measure_darkroom_run(throughput, photo, Path(tmp), args.model, args.tile)
            out = r["output_bytes"]
            r.update(
                model=args.model,
                input=[args.width, args.height],
                tile=args.tile,
                date=time.strftime("%Y-%m-%d"),
                ratio_peak_sum_pss=r["peak_sum_pss"] / out,
            )
            print(
                f"darkroom run, {args.width}×{args.height} through {args.model} (tile {args.tile}): output "
                f"{out / gib:.2f} GiB, "
                f"{r['wall_s']:.0f} s; peak of all its processes' PSS {r['peak_sum_pss'] / gib:.2f} GiB = "
                f"{r['ratio_peak_sum_pss']:.2f} × output"
            )
            for m in r["processes"]:
                print(f"  {m['title']:<60} peak RSS {m['peak_rss'] / gib:.2f} GiB = {m['peak_rss'] / out:.2f} × output")
            if not args.no_save:
                (HERE / "results").mkdir(exist_ok=True)
                (HERE / "results" / "big_image_run.json").write_text(json.dumps(r, indent=2))
            return 0
        cmd = [sys.executable, "-c", CHILD, str(photo), args.model, str(args.tile), str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=throughput._child_env())
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    out = r["output_bytes"]
    r.update(
        model=args.model,
        input=[args.width, args.height],
        tile=args.tile,
        date=time.strftime("%Y-%m-%d"),
        ratio_after_model=r["peak_rss_after_model"] / out,
        ratio_after_encode=r["peak_rss_after_encode"] / out,
    )
    print(
        f"{args.width}×{args.height} through {args.model} (tile {args.tile}, {args.threads} thread(s)): "
        f"output {r['output_shape'][1]}×{r['output_shape'][0]}, {out / gib:.2f} GiB; model {r['model_s']:.0f} s, "
        f"encode {r['encode_s']:.0f} s"
    )
    print(
        f"RSS after loading the model {r['rss_after_model_load'] / gib:.2f} GiB; peak after the model "
        f"{r['peak_rss_after_model'] / gib:.2f} GiB = {r['ratio_after_model']:.2f} × output; after encoding "
        f"{r['peak_rss_after_encode'] / gib:.2f} GiB = {r['ratio_after_encode']:.2f} × output (target ≤ 2.5 ×)"
    )
    if not args.no_save:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "big_image.json").write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
