"""Peak memory of one big photo through an x4 model on CPU with tiling (issue 8's big-image target).

A 6000×4000 JPEG (smooth noise + grain, q 90) goes, in a fresh process, through what darkroom's
actor and shard task do with it: ``images.decode`` → ``Chain`` (the job defaults: tile 512,
tile_pad 16, CPU) → ``images.encode`` to PNG. Peak RSS (``ru_maxrss``, the whole process,
torch and the model included) is read after the model and after the encoder, and compared
with the output's bytes (24000 × 16000 × 3 = 1.15 GB for uint8 RGB). Target: peak ≤ 2.5 ×
the output's bytes.

In a darkroom run the two halves happen in two processes (the model actor, then the shard
task that encodes), so the first figure bounds the actor and the second is what one
machine running both at once needs at most.

    .venv/bin/python benchmarks/big_image.py                          # darkroom-sr-x4, ~3 CPU-minutes
    .venv/bin/python benchmarks/big_image.py --model realesr-animevideov3   # ~11 CPU-minutes
    .venv/bin/python benchmarks/big_image.py --width 1500 --height 1000      # quick check

Prints the figures and writes benchmarks/results/big_image.json.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="darkroom-sr-x4", help="an x4 model from the registry")
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--tile", type=int, default=512, help="resources.tile (default: the job default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    spec = importlib.util.spec_from_file_location("darkroom_bench_throughput", HERE / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        throughput.smooth_noise(args.width, args.height, seed=7).save(photo, "JPEG", quality=90)
        cmd = [sys.executable, "-c", CHILD, str(photo), args.model, str(args.tile), str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=throughput._child_env())
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    gib = 2**30
    out = r["output_bytes"]
    r.update(model=args.model, input=[args.width, args.height], tile=args.tile, date=time.strftime("%Y-%m-%d"),
             ratio_after_model=r["peak_rss_after_model"] / out, ratio_after_encode=r["peak_rss_after_encode"] / out)
    print(f"{args.width}×{args.height} through {args.model} (tile {args.tile}, {args.threads} thread(s)): "
          f"output {r['output_shape'][1]}×{r['output_shape'][0]}, {out / gib:.2f} GiB; model {r['model_s']:.0f} s, encode {r['encode_s']:.0f} s")
    print(f"RSS after loading the model {r['rss_after_model_load'] / gib:.2f} GiB; peak after the model "
          f"{r['peak_rss_after_model'] / gib:.2f} GiB = {r['ratio_after_model']:.2f} × output; after encoding "
          f"{r['peak_rss_after_encode'] / gib:.2f} GiB = {r['ratio_after_encode']:.2f} × output (target ≤ 2.5 ×)")
    if not args.no_save:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "big_image.json").write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
