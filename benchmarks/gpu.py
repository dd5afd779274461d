"""GPU throughput: darkroom against the raw loop with realesrgan-x4plus in fp16, and GPU utilisation.

Run through benchmarks/gpu.sh (installs, then calls this within its time limit) on a machine
with one CUDA GPU. Side by side, on the same generated photos (smooth noise + grain, JPEG
q 90, ``--size``² pixels) and the same model from darkroom's registry:

  raw        one process, no Ray: decode → model (fp16, channels-last, batches of ``--batch``)
             → PNG encode (level 1, as darkroom) → write; the model stage's own rate is reported
             too (``model img/s``): what the GPU alone allows
  darkroom   `darkroom run job.yaml --log-format json`: one actor with ``gpus_per_actor: 1``
             (fp16 is darkroom's default on a GPU for models that support it), shard tasks on the
             CPUs decoding and encoding in parallel

Each variant runs in a fresh process at N and 2N inputs; steady img/s is the 2N run's in-run rate
(outputs after its first quarter over their time span, ``throughput.span_rate``), with the
marginal N / (wall(2N) − wall(N)) beside it, as in benchmarks/throughput.py. The raw loop
encodes PNG with darkroom's encoder (``pipeline.images.encode_png``). ``nvidia-smi`` is sampled every 200 ms during
every run; **GPU
busy %** is the mean ``utilization.gpu`` (the share of time a kernel was running) over the
samples between the 2N run's first and last output file (its steady phase, start-up and
tear-down excluded).

Quality (issue 18.4): darkroom's own inference path (``pipeline.inference.Chain``) over
``--quality-images`` photos of ``--quality-size``² pixels with ``resources.precision`` fp16 and
bf16 against fp32 on the same device: max abs diff in 8-bit levels, mean abs diff and PSNR (dB),
plus the img/s of each precision on whole batches (compute only, no decode or encode). A
precision the model does not declare safe runs in fp32 and is reported so.

Targets (issue 8): darkroom steady ≥ 0.95 × raw loop, GPU busy ≥ 90 % during darkroom's run.

    benchmarks/gpu.sh                                   # install + run, ≤ 8 minutes
    python3 benchmarks/gpu.py --n 64 --size 512         # after installing darkroom
    python3 benchmarks/gpu.py --cpu-smoke --model realesr-animevideov3 --n 2 --size 32 --quality-size 32
                                                        # the whole script on a CPU (figures meaningless,
                                                        # except the quality: the CPU runs fp16 and bf16 too)

Prints a table; writes gpu-<date>.json to ``$OUT`` if set, else benchmarks/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_spec = importlib.util.spec_from_file_location("darkroom_bench_throughput", HERE / "throughput.py")
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)


def make_photos(root: Path, size: int, counts: list[int]) -> dict[int, Path]:
    """``max(counts)`` JPEGs in root/all; root/n<k> holds the first k (hard links)."""
    base = root / "all"
    base.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(max(counts)):
        name = f"img{i:04d}.jpg"
        throughput.smooth_noise(size, size, seed=3000 + i).save(base / name, "JPEG", quality=90)
        names.append(name)
    dirs = {}
    for k in sorted(set(counts)):
        d = root / f"n{k}"
        d.mkdir(exist_ok=True)
        for name in names[:k]:
            os.link(base / name, d / name)
        dirs[k] = d
    return dirs


class GpuSampler:
    """``nvidia-smi`` polled every 200 ms into a CSV file while the context is open."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fh = open(self.path, "w")
        if not shutil.which("nvidia-smi"):  # --cpu-smoke on a machine without a GPU
            self.proc = None
            return self
        query = "timestamp,utilization.gpu,memory.used"
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=self.fh,
            stderr=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.fh.close()

    def samples(self) -> list[tuple[float, float, float]]:
        """(epoch seconds, utilisation %, memory MiB) per sample."""
        out = []
        for line in self.path.read_text().splitlines():
            try:
                stamp, util, mem = (f.strip() for f in line.split(","))
                t = time.mktime(time.strptime(stamp.split(".")[0], "%Y/%m/%d %H:%M:%S")) + float(
                    "0." + stamp.split(".")[1]
                )
                out.append((t, float(util), float(mem)))
            except (ValueError, IndexError):
                continue
        return out


def busy_between(samples: list[tuple[float, float, float]], t0: float, t1: float) -> dict:
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if not inside:
        return {"gpu_busy_pct": None, "samples": 0, "gpu_mem_mib_max": None}
    return {
        "gpu_busy_pct": sum(s[1] for s in inside) / len(inside),
        "samples": len(inside),
        "gpu_mem_mib_max": max(s[2] for s in inside),
    }


# ---------------------------------------------------------------------------------------
# The raw loop (child process)


def child_raw(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from models import default_registry
    from pipeline.images import encode_png

    t_start = time.perf_counter()
    model = default_registry().build(args.model)
    device, dtype = ("cpu", torch.float32) if args.cpu_smoke else ("cuda", torch.float16)
    module = model.module.to(device, dtype).eval().to(memory_format=torch.channels_last)
    files = sorted(p for p in Path(args.input).iterdir() if p.is_file())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stages = dict(decode=0.0, model=0.0, encode=0.0)
    t_loaded = time.perf_counter()
    for start in range(0, len(files), args.batch):
        t0 = time.perf_counter()
        arrays = [
            np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")) for p in files[start : start + args.batch]
        ]
        t1 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).to(dtype).div_(255)
            x = x.contiguous(memory_format=torch.channels_last)
            y = module(x).float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        t2 = time.perf_counter()
        for path, pixels in zip(files[start : start + args.batch], y):
            (out / (path.name + ".png")).write_bytes(encode_png(pixels))
        stages["decode"] += t1 - t0
        stages["model"] += t2 - t1
        stages["encode"] += time.perf_counter() - t2
    return {
        "load_s": t_loaded - t_start,
        "loop_s": time.perf_counter() - t_loaded,
        "stage_s": stages,
        "device": "cpu" if args.cpu_smoke else torch.cuda.get_device_name(0),
    }


# ---------------------------------------------------------------------------------------
# Quality of the half formats (in the parent process)


def quality(model_name: str, device_name: str, size: int, images: int, batch: int) -> dict:
    """fp16 and bf16 against fp32 through darkroom's inference path, on ``images`` generated
    size×size photos: per precision the dtype the model ran in, max / mean abs diff (8-bit
    levels), PSNR (dB) and compute-only img/s (after one warm-up batch)."""
    import numpy as np
    import torch

    from models import default_registry
    from pipeline.inference import Chain

    device = torch.device(device_name)
    photos = [np.asarray(throughput.smooth_noise(size, size, seed=5000 + i)) for i in range(images)]
    registry = default_registry()
    outputs, rows = {}, {}
    for precision in ("fp32", "fp16", "bf16"):
        chain = Chain([registry.build(model_name)], device, batch, tile=0, precision=precision)
        chain(photos[:batch])  # warm-up: cuDNN's algorithm search, lazy initialisation
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        results = chain(photos)
        seconds = time.perf_counter() - t0
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"{precision}: {errors[0]}")
        outputs[precision] = np.stack([r.pixels for r in results]).astype(np.float64)
        rows[precision] = {"dtype": str(chain.dtypes[0]).removeprefix("torch."), "img_s": images / seconds}
    for precision in ("fp16", "bf16"):
        diff = np.abs(outputs[precision] - outputs["fp32"])
        mse = float((diff**2).mean())
        rows[precision] |= {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "psnr_db": float("inf") if mse == 0 else 10 * float(np.log10(255**2 / mse)),
        }
    return {"model": model_name, "device": device_name, "size": size, "images": images, "precisions": rows}


def print_quality(q: dict) -> None:
    print(f"\nquality against fp32, {q['model']} on {q['device']}, {q['images']} × {q['size']}² photos")
    print(f"{'precision':<9} {'ran in':>8} {'max |Δ|':>8} {'mean |Δ|':>9} {'PSNR dB':>8} {'img/s':>8}")
    for name, r in q["precisions"].items():
        print(
            f"{name:<9} {r['dtype']:>8} {throughput._fmt(r.get('max_abs_diff'), '.0f'):>8} "
            f"{throughput._fmt(r.get('mean_abs_diff'), '.3f'):>9} {throughput._fmt(r.get('psnr_db'), '.1f'):>8} "
            f"{r['img_s']:>8.2f}"
        )


# ---------------------------------------------------------------------------------------
# Parent


def write_job(path: Path, model: str, input_dir: Path, output_dir: Path, batch: int, cpus: int, gpus: int = 1) -> None:
    import yaml

    job = {
        "name": "bench-gpu",
        "input": {"uri": str(input_dir) + "/"},
        "output": {"uri": str(output_dir) + "/", "format": "png"},
        "steps": [{"model": model}],
        # One actor on the GPU; every other CPU runs a shard task (decode + encode keep up with the GPU).
        "resources": {
            "actors": 1,
            "gpus_per_actor": gpus,
            "cpus_per_actor": 1,
            "batch_size": batch,
            "shard_size": 8,
            "max_inflight_shards": max(2, cpus - 1),
        },
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False))


def run_variant(variant: str, args, input_dir: Path, work: Path, n: int) -> dict:
    out = work / f"out-{variant}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    if variant == "darkroom":
        job = work / f"job-{n}.yaml"
        write_job(job, args.model, input_dir, out, args.batch, os.cpu_count() or 2, gpus=0 if args.cpu_smoke else 1)
        cmd = [throughput._darkroom_exe(), "run", str(job), "--log-format", "json"]
    else:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "raw",
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--input",
            str(input_dir),
            "--output",
            str(out),
        ] + (["--cpu-smoke"] if args.cpu_smoke else [])
    with GpuSampler(work / f"smi-{variant}-{n}.csv") as smi:
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=throughput._child_env(), cwd=REPO, timeout=args.timeout
        )
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}/{n} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    outputs = [p for p in out.rglob("*.png") if not p.name.startswith(".")]
    if len(outputs) != n:
        raise RuntimeError(f"{variant}/{n}: {len(outputs)} outputs, expected {n}")
    mtimes = sorted(p.stat().st_mtime for p in outputs)
    in_run = throughput.span_rate(out)
    detail = {}
    if variant == "raw":
        detail = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    shutil.rmtree(out, ignore_errors=True)
    return {
        "n": n,
        "wall_s": wall,
        "in_run_img_s": in_run,
        "first_output": mtimes[0],
        "last_output": mtimes[-1],
        "detail": detail,
        **busy_between(smi.samples(), mtimes[0], mtimes[-1]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="realesrgan-x4plus")
    ap.add_argument("--n", type=int, default=64, help="runs at N and 2N inputs")
    ap.add_argument("--size", type=int, default=512, help="input side in pixels (outputs are ×4)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--variants", default="raw,darkroom")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per child process")
    ap.add_argument("--quality-size", type=int, default=256, help="side of the photos of the fp16/bf16 check")
    ap.add_argument("--quality-images", type=int, default=8, help="photos in the fp16/bf16 check; 0 skips it")
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="check the script without a GPU (CPU, fp32; figures meaningless)"
    )
    ap.add_argument("--child", choices=["raw"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child_raw(args)), flush=True)
        return 0

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(
            "no CUDA GPU visible to torch: this benchmark needs one (--cpu-smoke checks the script without)",
            file=sys.stderr,
        )
        return 2
    card = "cpu (smoke run)" if args.cpu_smoke else torch.cuda.get_device_name(0)
    smi = (
        ""
        if args.cpu_smoke
        else subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    print(f"GPU: {smi or card}; torch {torch.__version__}; {os.cpu_count()} CPUs", flush=True)
    from models import default_registry

    t0 = time.perf_counter()
    default_registry().build(args.model)  # converts and caches the weights once, so no variant pays for it
    print(f"model {args.model} ready in {time.perf_counter() - t0:.1f} s", flush=True)

    q = None
    if args.quality_images:
        q = quality(args.model, "cpu" if args.cpu_smoke else "cuda", args.quality_size, args.quality_images, args.batch)
        print_quality(q)

    work = Path(tempfile.mkdtemp(prefix="darkroom-gpu-"))
    rows = []
    try:
        dirs = make_photos(work / "in", args.size, [args.n, 2 * args.n])
        for variant in [v for v in args.variants.split(",") if v]:
            runs = []
            for k in (args.n, 2 * args.n):
                print(f"{variant} N={k} …", flush=True)
                runs.append(run_variant(variant, args, dirs[k], work, k))
                r = runs[-1]
                print(
                    f"  {r['wall_s']:.2f} s, GPU busy {throughput._fmt(r['gpu_busy_pct'], '.0f')} % over "
                    f"{r['samples']} samples",
                    flush=True,
                )
            delta = runs[1]["wall_s"] - runs[0]["wall_s"]
            row = {
                "variant": variant,
                "n": args.n,
                "wall_s_n": runs[0]["wall_s"],
                "wall_s_2n": runs[1]["wall_s"],
                "steady_img_s": runs[1]["in_run_img_s"],
                "marginal_img_s": args.n / delta if delta > 0 else None,
                "gpu_busy_pct": runs[1]["gpu_busy_pct"],
                "gpu_mem_mib_max": runs[1]["gpu_mem_mib_max"],
                "runs": runs,
            }
            if variant == "raw":
                model_s = runs[1]["detail"]["stage_s"]["model"]
                row["model_only_img_s"] = 2 * args.n / model_s if model_s else None
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    raw = next((r for r in rows if r["variant"] == "raw"), None)
    print(
        f"\n{'variant':<9} {'N':>4} {'wall N':>7} {'wall 2N':>8} {'steady img/s':>12} {'vs raw':>7} "
        f"{'GPU busy %':>10} {'model img/s':>11}"
    )
    for r in rows:
        ratio = r["steady_img_s"] / raw["steady_img_s"] if raw and raw["steady_img_s"] and r["steady_img_s"] else None
        r["ratio_vs_raw"] = ratio
        print(
            f"{r['variant']:<9} {r['n']:>4} {r['wall_s_n']:>7.2f} {r['wall_s_2n']:>8.2f} "
            f"{throughput._fmt(r['steady_img_s'], '.2f'):>12} "
            f"{throughput._fmt(ratio, '.2f'):>7} {throughput._fmt(r['gpu_busy_pct'], '.0f'):>10} "
            f"{throughput._fmt(r.get('model_only_img_s'), '.2f'):>11}"
        )
    dr = next((r for r in rows if r["variant"] == "darkroom"), None)
    if dr:
        print(
            f"target darkroom ≥ 0.95 × raw: {throughput._fmt(dr['ratio_vs_raw'], '.2f')}; GPU busy ≥ 90 %: "
            f"{throughput._fmt(dr['gpu_busy_pct'], '.0f')} %"
        )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": smi or card,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "rows": rows,
        "quality": q,
    }
    dest = Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"gpu-{result['date']}{'-cpu-smoke' if args.cpu_smoke else ''}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
