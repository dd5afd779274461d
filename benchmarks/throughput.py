"""Throughput of darkroom against a raw loop, a one-image loop and naive Ray Data, side by side.

Same inputs, same model (from darkroom's registry), same machine, in one run:

  raw        one process, no Ray: decode → model (batches of 4) → PNG encode → write
  one-image  the same, one image at a time (like Real-ESRGAN's inference CLI)
  ray-data   ray.data.read_images → map_batches(callable class, batch_size=4,
             ActorPoolStrategy(size=1), num_cpus=1) → write_images(png)
  darkroom   `darkroom run job.yaml --log-format json` (actors: 1, cpus_per_actor: 1, batch_size: 4,
             shard_size: N / 4, every other resource at its default). Shards of N / 4 inputs make
             the N and 2N runs 4 and 8 shards, as an archive's run has many shards in flight; at
             the default 64 a small N would be one shard, one task decoding and encoding alone.
  darkroom:FIELD=VALUE;…  (optional, not in the default list) the same with resources overridden,
             to compare settings side by side, e.g. `darkroom:threads_per_actor=1` (the model
             actor's torch threads before they were decoupled from its CPU reservation) or
             `darkroom:cpus_per_task=0.5;tile=0`
  pillow     (decode workload only) Pillow decode + PNG encode, no model: the limit a
             decode-bound pipeline can approach (per-core rate × cores, and two processes measured)

Workloads: ``compute`` = realesr-animevideov3 (×4 SRVGGNetCompact, real weights) on 128×128
PNGs → 512×512 PNGs; ``decode`` = bicubic scale 2 on 1152×864 JPEGs → 2304×1728 PNGs. Inputs
are generated deterministically (smooth noise + grain) in a temporary directory.

Every variant runs in a fresh process (Ray variants start their own local Ray), timed from
launch to exit by this script, at N and 2N inputs. Steady-state throughput is measured inside
the 2N run, from its output files' modification times: the outputs after the first quarter
(start-up, warm-up) over the time they took (``span_rate``); launch jitter cannot move it. The
marginal rate N / (wall(2N) − wall(N)), where start-up and tear-down cancel out, is a
cross-check (it was the headline figure until 2026-11-30: a second of launch jitter in either
process moved it by 20 % here). Start-up is reported apart: wall(N) − N / steady, and the time
from launching `darkroom run` on a 10-image job to its first output file.

Threads: the machine's cores (``os.cpu_count()``) are the budget of every variant. The raw
and one-image loops give torch all of them; the Ray variants run on a local Ray with that
many CPUs and one model actor reserving one CPU. Ray Data's actor runs 1 torch thread (Ray
sets a worker's threads to its CPUs); darkroom's runs as many as the node has CPUs (its
default on a one-node cluster with one CPU actor: threads_per_actor), next to the shard tasks
that read, decode and encode. The loops encode PNG with darkroom's encoder (libpng through
imagecodecs, level 1); Ray Data's write_images uses Pillow's default (level 6) and has no
option to change it; the Pillow limit is Pillow's level 1, and also reported with darkroom's
encoder.

Shared machines: before each run the CPU other processes use is sampled (/proc/stat), and
during it the CPU time of other people's processes is counted (/proc/<pid>/stat); both are
in the JSON and the table's ``others`` column, so a disturbed row can be recognised. The
children's own clocks give a third estimate (``inner_steady_img_s``: the marginal rate of loop
time, Ray Data pipeline time, darkroom planned → finished) that excludes process start-up.
``--repeat R`` runs R rounds, every variant once per round (alternating, so a slow spell of the
machine hits all variants of a round alike); rates are medians over the rounds, and ratios are
the medians of ratios taken within each round. ``make bench`` runs 3 rounds.

    .venv/bin/python benchmarks/throughput.py --repeat 3      # full run (make bench), ~25 min on 2 cores
    .venv/bin/python benchmarks/throughput.py --quick         # smoke run, small N
    .venv/bin/python benchmarks/throughput.py --quick --variants raw,one-image --workloads compute --no-save
    .venv/bin/python benchmarks/throughput.py --variants 'darkroom,darkroom:threads_per_actor=1' \
        --workloads compute --no-startup

Writes benchmarks/results/throughput-<date>.json (unless --no-save) and prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BATCH = 4

WORKLOADS = {
    "compute": {
        "model": "realesr-animevideov3",
        "params": {},
        "size": (128, 128),  # width, height
        "ext": "png",
        "scale": 4,
        "n": 64,
        "quick_n": 2,
        "shard_size": 16,  # N / 4
    },
    "decode": {
        "model": "bicubic",
        "params": {"scale": 2},
        "size": (1152, 864),
        "ext": "jpg",
        "scale": 2,
        "n": 16,
        "quick_n": 1,
        "shard_size": 4,  # N / 4
    },
}
VARIANTS = ["raw", "one-image", "ray-data", "darkroom", "pillow"]
OPTIONAL_VARIANTS = ["darkroom:FIELD=VALUE;…"]
STARTUP_IMAGES = 10
PNG_LEVEL = 1  # the Pillow limit's compress_level (darkroom and the loops use pipeline.images.encode_png)


# ---------------------------------------------------------------------------------------
# Inputs


def smooth_noise(width: int, height: int, seed: int):
    """A photo-like RGB image: a bicubic-upsampled coarse random field plus fine grain."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    cell = max(4, min(width, height) // 12)
    coarse = (rng.random((height // cell + 2, width // cell + 2, 3)) * 255).astype(np.uint8)
    big = Image.fromarray(coarse).resize(((width // cell + 2) * cell, (height // cell + 2) * cell), Image.BICUBIC)
    field = np.asarray(big)[cell : cell + height, cell : cell + width].astype(np.int16)
    grain = rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8), "RGB")


def make_inputs(root: Path, workload: str, counts: list[int]) -> dict[int, Path]:
    """``max(counts)`` images in root/<workload>/all; root/<workload>/n<k> holds the first k (hard links)."""
    spec = WORKLOADS[workload]
    width, height = spec["size"]
    base = root / workload / "all"
    base.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(max(counts)):
        name = f"img{i:04d}.{spec['ext']}"
        im = smooth_noise(width, height, seed=1000 * (1 if workload == "compute" else 2) + i)
        if spec["ext"] == "jpg":
            im.save(base / name, "JPEG", quality=90)
        else:
            im.save(base / name, "PNG")
        names.append(name)
    dirs = {}
    for k in sorted(set(counts)):
        d = root / workload / f"n{k}"
        d.mkdir(exist_ok=True)
        for name in names[:k]:
            os.link(base / name, d / name)
        dirs[k] = d
    return dirs


def busy_cores(seconds: float = 0.5) -> float | None:
    """CPU cores busy over the next ``seconds`` (from /proc/stat), taken while this script is
    idle between runs: what other processes are using just before a measurement."""

    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def _proc_cpu() -> dict[int, tuple[int, float]]:
    """pid → (ppid, CPU seconds so far) for every process visible in /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def others_cpu_seconds(before: dict, after: dict) -> float:
    """CPU seconds other people's processes used between two _proc_cpu() snapshots.

    Counted: processes that existed before (except this script), and new processes whose
    parent chain leads to one of those (e.g. a test run someone started meanwhile). Not
    counted: this script's children (started after ``before``; orphans of them hang off
    pid 1) and processes that started and ended in between (so this is a lower bound).
    """
    me = os.getpid()
    total = 0.0
    for pid, (ppid, cpu) in after.items():
        if pid == me:
            continue
        if pid in before:
            total += max(0.0, cpu - before[pid][1])
            continue
        seen, parent = set(), ppid
        while parent not in before and parent in after and parent not in seen:
            seen.add(parent)
            parent = after[parent][0]
        if parent in before and parent not in (0, 1, me):
            total += cpu
    return total


def count_outputs(out: Path) -> int:
    return sum(1 for p in out.rglob("*.png") if not p.name.startswith("."))


def span_rate(out: Path) -> float | None:
    """Steady img/s inside one run, from its output files' modification times: the outputs after
    the first quarter (start-up and warm-up) over the time from the quarter's last to the last
    output. Unlike the marginal rate it needs no second process, so launch jitter cannot move it;
    it includes the run's tail (a pipeline draining its last batches)."""
    times = sorted(p.stat().st_mtime for p in out.rglob("*.png") if not p.name.startswith("."))
    first = len(times) // 4
    if len(times) < 8 or times[-1] <= times[first]:
        return None
    return (len(times) - 1 - first) / (times[-1] - times[first])


# ---------------------------------------------------------------------------------------
# Children (each variant runs in its own process: `throughput.py --child VARIANT ...`)


def _build_module(workload: str):
    from models import default_registry

    spec = WORKLOADS[workload]
    return default_registry().build(spec["model"], spec["params"]).module.eval()


def _forward(module, arrays):
    """Same-shape H×W×3 uint8 arrays → list of uint8 outputs (as darkroom's Chain: /255, clamp, round)."""
    import numpy as np
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        y = module(x).float().clamp(0, 1)
        out = (y * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(out)


def child_loop(args) -> dict:
    """raw (batch 4) or one-image (batch 1): decode → model → encode → write, in this process."""
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.images import encode_png

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    module = _build_module(args.workload)
    t_loaded = time.perf_counter()
    batch = BATCH if args.child == "raw" else 1
    files = sorted(p for p in Path(args.input).iterdir() if p.is_file())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stages = dict(read=0.0, decode=0.0, model=0.0, encode=0.0, write=0.0)
    for start in range(0, len(files), batch):
        arrays = []
        for path in files[start : start + batch]:
            t0 = time.perf_counter()
            data = path.read_bytes()
            t1 = time.perf_counter()
            im = Image.open(io.BytesIO(data))
            arrays.append(np.asarray(im.convert("RGB")))
            stages["read"] += t1 - t0
            stages["decode"] += time.perf_counter() - t1
        t0 = time.perf_counter()
        outputs = _forward(module, arrays)
        stages["model"] += time.perf_counter() - t0
        for path, pixels in zip(files[start : start + batch], outputs):
            t0 = time.perf_counter()
            data = encode_png(pixels)
            t1 = time.perf_counter()
            (out / (path.name + ".png")).write_bytes(data)
            stages["encode"] += t1 - t0
            stages["write"] += time.perf_counter() - t1
    t_end = time.perf_counter()
    return {
        "model_load_s": t_loaded - t_start,
        "loop_s": t_end - t_loaded,
        "torch_threads": torch.get_num_threads(),
        "stage_s": stages,
    }


class _Upscale:
    """The model as a Ray Data callable class: loads once per actor, maps a batch of images."""

    def __init__(self, workload: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.module = _build_module(workload)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        arrays = list(batch["image"])
        return {"image": np.stack(_forward(self.module, arrays))}


def child_ray_data(args) -> dict:
    import logging

    import ray

    t0 = time.perf_counter()
    ray.init(logging_level=logging.WARNING, include_dashboard=False)
    t1 = time.perf_counter()
    ds = ray.data.read_images(args.input)
    ds = ds.map_batches(
        _Upscale,
        fn_constructor_args=(args.workload, 1),
        batch_size=BATCH,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    )
    ds.write_images(args.output, column="image", file_format="png")
    t2 = time.perf_counter()
    ray.shutdown()
    return {"ray_init_s": t1 - t0, "pipeline_s": t2 - t1, "shutdown_s": time.perf_counter() - t2}


def child_pillow(args) -> dict:
    """Pillow decode + PNG encode (level 1) of each input, no model: the per-core limit.

    The encoded image is the input resized ×scale with Pillow's bicubic (done outside the
    timed region), so the encoder sees an image of the output's size and kind. Each image is
    also encoded with darkroom's PNG encoder (libpng, ``pipeline.images.encode_png``), timed
    apart: the limit with the encoder darkroom and the loops use.
    """
    import numpy as np
    from PIL import Image

    from pipeline.images import encode_png

    spec = WORKLOADS[args.workload]
    files = sorted(p for p in Path(args.input).iterdir() if p.is_file())
    if args.part is not None:
        index, parts = args.part
        files = files[index::parts]
    t_decode = t_encode = t_encode_darkroom = 0.0
    for path in files:
        data = path.read_bytes()
        t0 = time.perf_counter()
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        t_decode += time.perf_counter() - t0
        h, w = pixels.shape[:2]
        big = Image.fromarray(pixels).resize((w * spec["scale"], h * spec["scale"]), Image.BICUBIC)
        t0 = time.perf_counter()
        buf = io.BytesIO()
        big.save(buf, format="PNG", compress_level=PNG_LEVEL)
        t_encode += time.perf_counter() - t0
        planes = np.asarray(big)
        t0 = time.perf_counter()
        encode_png(planes)
        t_encode_darkroom += time.perf_counter() - t0
    return {"images": len(files), "decode_s": t_decode, "encode_s": t_encode, "encode_darkroom_s": t_encode_darkroom}


# ---------------------------------------------------------------------------------------
# Parent: launching and timing the children


def _child_env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # every Ray variant starts its own local Ray
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _darkroom_exe() -> str:
    exe = Path(sys.executable).parent / "darkroom"
    return str(exe) if exe.exists() else (shutil.which("darkroom") or "darkroom")


def darkroom_overrides(variant: str) -> dict:
    """``darkroom:threads_per_actor=1;tile=0`` → {"threads_per_actor": 1, "tile": 0} (values as YAML)."""
    import yaml

    _, _, spec = variant.partition(":")
    pairs = [item.split("=", 1) for item in spec.split(";") if item]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"{variant!r}: expected darkroom:FIELD=VALUE;FIELD=VALUE")
    return {k.strip(): yaml.safe_load(v) for k, v in pairs}


def write_job(path: Path, workload: str, input_dir: Path, output_dir: Path, overrides: dict | None = None) -> None:
    import yaml

    spec = WORKLOADS[workload]
    job = {
        "name": f"bench-{workload}",
        "input": {"uri": str(input_dir) + "/"},
        "output": {"uri": str(output_dir) + "/", "format": "png"},
        "steps": [{"model": spec["model"], "params": spec["params"]}],
        "resources": {"actors": 1, "cpus_per_actor": 1, "batch_size": BATCH, "shard_size": spec["shard_size"]}
        | (overrides or {}),
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False))


def _manifest_stages(output_dir: Path) -> dict:
    """Per-image mean of darkroom's manifest stage timings (t_read … t_write)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    files = [str(p) for p in (output_dir / "manifest").rglob("*.parquet")]
    if not files:
        return {}
    cols = ["t_read", "t_decode", "t_model", "t_encode", "t_write"]
    table = pads.dataset(files, format="parquet").to_table(columns=cols + ["status"])
    means = {c: pc.mean(table[c]).as_py() for c in cols}
    means["ok_rows"] = int(pc.sum(pc.equal(table["status"], "ok")).as_py() or 0)
    return means


def model_threads(variant: str, loop_threads: int, cores: int) -> int:
    """torch threads of the variant's model: the loops' --threads; Ray Data's actor 1 (Ray sets a
    worker's threads to its num_cpus); darkroom's threads_per_actor, by default the node's CPUs
    (one CPU actor on a one-node cluster), never fewer than cpus_per_actor."""
    if variant in ("raw", "one-image"):
        return loop_threads
    if variant.startswith("darkroom"):
        overrides = darkroom_overrides(variant)
        return int(overrides.get("threads_per_actor") or max(cores, overrides.get("cpus_per_actor", 1)))
    return 1


def run_variant(variant: str, workload: str, input_dir: Path, work: Path, n: int, threads: int, timeout: float) -> dict:
    """Run one variant on ``input_dir`` in a fresh process; wall time from launch to exit."""
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in variant)
    out = work / f"out-{slug}-{workload}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    log = work / f"log-{slug}-{workload}-{n}.txt"
    load_before = os.getloadavg()[0]
    busy_before = busy_cores()
    if variant.startswith("darkroom"):
        job = work / f"job-{slug}-{workload}-{n}.yaml"
        write_job(job, workload, input_dir, out, darkroom_overrides(variant))
        cmd = [_darkroom_exe(), "run", str(job), "--log-format", "json"]
    else:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            variant,
            "--workload",
            workload,
            "--input",
            str(input_dir),
            "--output",
            str(out),
            "--threads",
            str(threads),
        ]
    launched_epoch = time.time()
    procs_before = _proc_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), cwd=REPO, timeout=timeout)
    wall = time.perf_counter() - t0
    others = others_cpu_seconds(procs_before, _proc_cpu())
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}/{workload}/{n} exited {proc.returncode}; see {log}:\n{proc.stderr[-3000:]}")
    produced = count_outputs(out)
    span = span_rate(out)
    if produced != n:
        raise RuntimeError(f"{variant}/{workload}/{n}: {produced} outputs, expected {n}; see {log}")
    detail: dict = {}
    if variant.startswith("darkroom"):
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        at = {e["event"]: e["time"] - launched_epoch for e in events if e["event"] != "shard"}
        shards = [e["time"] - launched_epoch for e in events if e["event"] == "shard"]
        finished = next((e for e in events if e["event"] == "finished"), {})
        detail = {
            "planning_event_s": at.get("planning"),  # launch → api.run started (imports, job parsing)
            "planned_event_s": at.get("planned"),  # … → plan written
            "first_shard_done_s": shards[0] if shards else None,
            "finished_event_s": at.get("finished"),
            "api_wall_s": finished.get("wall_seconds"),
            "manifest_mean_stage_s": _manifest_stages(out),
        }
    else:
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        detail = json.loads(lines[-1]) if lines else {}
    shutil.rmtree(out, ignore_errors=True)
    return {
        "n": n,
        "wall_s": wall,
        "span_img_s": span,
        "load_before": load_before,
        "busy_cores_before": busy_before,
        "load_after": os.getloadavg()[0],
        "others_cores_during": others / wall,
        "detail": detail,
    }


def measure_startup(input_dir: Path, work: Path, timeout: float) -> dict:
    """Launch `darkroom run` on a 10-image job; seconds until the first output file appears."""
    out = work / "out-startup"
    shutil.rmtree(out, ignore_errors=True)
    job = work / "job-startup.yaml"
    write_job(job, "compute", input_dir, out)
    images = out / "images"
    cmd = [_darkroom_exe(), "run", str(job), "--log-format", "json"]
    load_before = os.getloadavg()[0]
    procs_before = _proc_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_child_env(), cwd=REPO)
    first = None
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        if (
            first is None
            and images.is_dir()
            and any(p.suffix == ".png" and not p.name.startswith(".") for p in images.rglob("*"))
        ):
            first = time.perf_counter() - t0
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        raise RuntimeError("darkroom start-up run timed out")
    wall = time.perf_counter() - t0
    others = others_cpu_seconds(procs_before, _proc_cpu())
    if first is None and count_outputs(out):
        first = wall  # finished between two polls
    shutil.rmtree(out, ignore_errors=True)
    return {
        "images": STARTUP_IMAGES,
        "first_output_s": first,
        "wall_s": wall,
        "exit_code": proc.returncode,
        "load_before": load_before,
        "others_cores_during": others / wall,
    }


def measure_pillow(input_dir: Path, workload: str, cores: int, timeout: float) -> dict:
    """The Pillow limit: one process's decode+encode rate × cores, and ``cores`` processes measured."""
    script = str(Path(__file__).resolve())
    base = [
        sys.executable,
        script,
        "--child",
        "pillow",
        "--workload",
        workload,
        "--input",
        str(input_dir),
        "--output",
        "-",
    ]

    def result(proc) -> dict:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"pillow child failed: {err[-2000:]}")
        return json.loads(out.strip().splitlines()[-1])

    single = result(subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env()))
    per_core = single["images"] / (single["decode_s"] + single["encode_s"])
    procs = [
        subprocess.Popen(
            base + ["--part", str(i), str(cores)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        for i in range(cores)
    ]
    parts = [result(p) for p in procs]
    parallel = sum(p["images"] for p in parts) / max(p["decode_s"] + p["encode_s"] for p in parts)
    return {
        "per_core_img_s": per_core,
        "cores": cores,
        "limit_img_s": per_core * cores,
        "measured_parallel_img_s": parallel,
        "decode_ms_per_image": 1000 * single["decode_s"] / single["images"],
        "encode_ms_per_image": 1000 * single["encode_s"] / single["images"],
        # The same limit with darkroom's encoder (libpng) in place of Pillow's, per core × cores.
        "darkroom_encoder_limit_img_s": cores * single["images"] / (single["decode_s"] + single["encode_darkroom_s"]),
        "darkroom_encoder_ms_per_image": 1000 * single["encode_darkroom_s"] / single["images"],
    }


def machine_info(threads: int) -> dict:
    import numpy
    import PIL
    import ray
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": os.cpu_count(),
        "threads_used": threads,
        "cpu_model": cpu,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "ray": ray.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def summarise(variant: str, workload: str, n: int, runs: list[dict], threads: int) -> dict:
    """One table row: per round, the steady rate (the 2N run's in-run rate, ``span_rate``), the
    marginal rate N / (wall(2N) − wall(N)) and the inner rate; the row shows each one's median
    over rounds."""
    spec = WORKLOADS[workload]
    rounds = sorted({r["round"] for r in runs})
    per_round = []
    for k in rounds:
        pair = {r["n"]: r for r in runs if r["round"] == k}
        delta = pair[2 * n]["wall_s"] - pair[n]["wall_s"]
        per_round.append(
            {
                "wall_n": pair[n]["wall_s"],
                "wall_2n": pair[2 * n]["wall_s"],
                "steady": pair[2 * n]["span_img_s"],
                "marginal": n / delta if delta > 0 else None,
                "inner": _inner_steady(variant, n, [pair[n], pair[2 * n]]),
            }
        )
    med = {key: _median([p[key] for p in per_round]) for key in ("wall_n", "wall_2n", "steady", "marginal", "inner")}
    steady = med["steady"]
    return {
        "variant": variant,
        "workload": workload,
        "model": spec["model"],
        "params": spec["params"],
        "input_size": list(spec["size"]),
        "model_threads": threads,
        "n": n,
        "rounds": len(rounds),
        "wall_s_n": med["wall_n"],
        "wall_s_2n": med["wall_2n"],
        "steady_img_s": steady,
        "startup_s": med["wall_n"] - n / steady if steady else None,
        "marginal_img_s": med["marginal"],
        "inner_steady_img_s": med["inner"],
        "per_round": per_round,
        "runs": runs,
    }


def _median(values: list) -> float | None:
    values = sorted(v for v in values if v is not None and v == v)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _ratios(row: dict, base: dict | None, key: str) -> tuple[float | None, list]:
    """Median and list of the per-round ratios row / base of a per-round rate (same round)."""
    if base is None:
        return None, []
    ratios = [
        None if a[key] is None or b[key] is None or not b[key] else a[key] / b[key]
        for a, b in zip(row["per_round"], base["per_round"])
    ]
    return _median(ratios), ratios


def _inner_steady(variant: str, n: int, runs: list[dict]) -> float | None:
    """Cross-check of the steady rate from the children's own clocks (process start-up and
    imports excluded): N / (inner(2N) - inner(N)), the fastest run of each size."""

    def inner(d: dict) -> float | None:
        if variant in ("raw", "one-image"):
            return d.get("loop_s")
        if variant == "ray-data":
            return d.get("pipeline_s")
        if (
            variant.startswith("darkroom")
            and d.get("finished_event_s") is not None
            and d.get("planned_event_s") is not None
        ):
            return d["finished_event_s"] - d["planned_event_s"]  # ray.init + actor start + shards
        return None

    t_n = [inner(r["detail"]) for r in runs if r["n"] == n]
    t_2n = [inner(r["detail"]) for r in runs if r["n"] == 2 * n]
    if not t_n or not t_2n or None in t_n + t_2n:
        return None
    return n / (min(t_2n) - min(t_n)) if min(t_2n) > min(t_n) else None


def print_table(rows: list[dict], pillow: dict | None, startup: dict | None) -> None:
    width = max([11] + [len(r["variant"]) for r in rows])
    head = (
        f"{'variant':<{width}} {'workload':<8} {'threads':>7} {'wall s N':>9} {'wall s 2N':>9} {'N':>4} "
        f"{'steady img/s':>12} "
        f"{'startup s':>9} {'vs raw':>7} {'vs RayData':>10} {'marginal img/s':>14} {'marginal vs raw':>15} "
        f"{'inner img/s':>11} {'others':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['variant']:<{width}} {r['workload']:<8} {r['model_threads']:>7} {r['wall_s_n']:>9.2f} "
            f"{r['wall_s_2n']:>9.2f} {r['n']:>4} "
            f"{_fmt(r['steady_img_s'], '.3f'):>12} {_fmt(r['startup_s'], '.2f'):>9} "
            f"{_fmt(r['ratio_vs_raw'], '.2f'):>7} {_fmt(r['ratio_vs_ray_data'], '.2f'):>10} "
            f"{_fmt(r['marginal_img_s'], '.3f'):>14} {_fmt(r['marginal_ratio_vs_raw'], '.2f'):>15} "
            f"{_fmt(r['inner_steady_img_s'], '.3f'):>11} "
            f"{max(x['others_cores_during'] for x in r['runs']):>6.2f}"
        )
    print(
        "(threads: torch threads of the model; steady: the 2N run's outputs after its first quarter over their time "
        "span;\n"
        " marginal: N / (wall(2N) - wall(N)); inner: the marginal rate from the children's own clocks; with rounds > "
        "1\n"
        " every figure is the median over rounds and each ratio the median of per-round ratios; others: most CPU "
        "cores\n"
        " other people's processes used during one of the row's runs)"
    )
    if pillow:
        print(
            f"pillow     decode   decode+encode {pillow['per_core_img_s']:.3f} img/s per core × {pillow['cores']} = "
            f"{pillow['limit_img_s']:.3f} img/s "
            f"(measured with {pillow['cores']} processes: {pillow['measured_parallel_img_s']:.3f}); "
            f"decode {pillow['decode_ms_per_image']:.0f} ms + encode {pillow['encode_ms_per_image']:.0f} ms per image; "
            f"with darkroom's encoder ({pillow['darkroom_encoder_ms_per_image']:.0f} ms) "
            f"{pillow['darkroom_encoder_limit_img_s']:.3f} img/s"
        )
    if startup:
        print(
            f"start-up   darkroom run, {startup['images']} images: first output after "
            f"{_fmt(startup['first_output_s'], '.2f')} s, done after {startup['wall_s']:.2f} s"
        )


def evaluate_targets(rows: list[dict], pillow: dict | None, startup: dict | None) -> list[dict]:
    by = {(r["variant"], r["workload"]): r for r in rows}
    targets = []

    def add(name: str, value, threshold: float, unit: str, higher_is_better: bool = True):
        if value is not None and value != value:  # nan: wall(2N) ≤ wall(N), the run was disturbed
            value = None
        met = None if value is None else (value >= threshold if higher_is_better else value <= threshold)
        targets.append({"target": name, "value": value, "threshold": threshold, "unit": unit, "met": met})

    dr = by.get(("darkroom", "compute"))
    if dr:
        add("compute: darkroom steady / raw steady", dr["ratio_vs_raw"], 0.90, "×")
        add("compute: darkroom marginal / raw marginal (cross-check)", dr["marginal_ratio_vs_raw"], 0.90, "×")
        add("compute: darkroom steady / Ray Data steady", dr["ratio_vs_ray_data"], 1.2, "×")
    dd = by.get(("darkroom", "decode"))
    if dd and pillow:
        steady = dd["steady_img_s"] or float("nan")
        add("decode: darkroom steady / Pillow decode+encode limit", steady / pillow["limit_img_s"], 0.5, "×")
        add(
            "decode: darkroom steady / the same limit with darkroom's encoder",
            steady / pillow["darkroom_encoder_limit_img_s"],
            0.5,
            "×",
        )
    if startup:
        add(
            f"first output of a {startup['images']}-image job",
            startup["first_output_s"],
            15.0,
            "s",
            higher_is_better=False,
        )
    return targets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N: a smoke run (figures not meaningful)")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS + OPTIONAL_VARIANTS)}",
    )
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--n", type=int, help="override N for every workload (runs at N and 2N)")
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds: every variant's N/2N pair once per round; medians over rounds"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of the raw/one-image loops (default: all cores)",
    )
    ap.add_argument("--no-startup", action="store_true", help="skip the first-output start-up measurement")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/throughput-<date>.json")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per child process")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (inputs, logs)")
    # Internal: run one variant in this (fresh) process.
    ap.add_argument("--child", choices=["raw", "one-image", "ray-data", "pillow"], help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--part", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        fn = {"raw": child_loop, "one-image": child_loop, "ray-data": child_ray_data, "pillow": child_pillow}[
            args.child
        ]
        print(json.dumps(fn(args)), flush=True)
        return 0

    variants = [v for v in args.variants.split(",") if v]
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [v for v in variants if v not in VARIANTS and not v.startswith("darkroom:")] + [
        w for w in workloads if w not in WORKLOADS
    ]
    if unknown:
        ap.error(f"unknown variant/workload: {', '.join(unknown)}")
    cores = os.cpu_count() or 1
    started = time.time()
    load_start = os.getloadavg()
    print(
        f"load average before: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}  (nproc {cores})", flush=True
    )

    from models import default_registry

    for w in workloads:  # converts/caches weights once, so no variant pays for it
        reg = default_registry()
        reg.build(WORKLOADS[w]["model"], WORKLOADS[w]["params"])

    # Warm the page cache (torch, Ray, Ray Data, darkroom), so the first measured process does not pay for it.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch, ray, PIL, pipeline.cli" + (", ray.data" if "ray-data" in variants else ""),
        ],
        env=_child_env(),
        cwd=REPO,
        capture_output=True,
    )
    work = Path(tempfile.mkdtemp(prefix="darkroom-bench-"))
    rows: list[dict] = []
    pillow = startup = None
    try:
        for workload in workloads:
            spec = WORKLOADS[workload]
            n = args.n or (spec["quick_n"] if args.quick else spec["n"])
            counts = [n, 2 * n] + (
                [STARTUP_IMAGES] if workload == "compute" and "darkroom" in variants and not args.no_startup else []
            )
            dirs = make_inputs(work / "inputs", workload, counts)
            if "pillow" in variants and workload == "decode":
                print(f"[{time.time() - started:6.1f}s] pillow limit / {workload} (N={2 * n})", flush=True)
                pillow = measure_pillow(dirs[2 * n], workload, cores, args.timeout)
            timed = [v for v in variants if v != "pillow"]
            runs: dict[str, list[dict]] = {v: [] for v in timed}
            # Rounds: every variant once per round, so a slow spell of the machine hits every
            # variant of a round alike and the per-round ratios compare like with like.
            for round_ in range(args.repeat):
                for variant in timed:
                    for k in (n, 2 * n):
                        print(
                            f"[{time.time() - started:6.1f}s] {variant} / {workload} / N={k} round {round_ + 1} "
                            f"(load {os.getloadavg()[0]:.2f})",
                            flush=True,
                        )
                        r = run_variant(variant, workload, dirs[k], work, k, args.threads, args.timeout) | {
                            "round": round_
                        }
                        runs[variant].append(r)
                        print(
                            f"          {r['wall_s']:.2f} s, in-run {_fmt(r['span_img_s'], '.2f')} img/s (other "
                            "processes: "
                            f"{_fmt(r['busy_cores_before'], '.2f')} cores just before, "
                            f"{r['others_cores_during']:.2f} cores during)",
                            flush=True,
                        )
            rows += [
                summarise(variant, workload, n, runs[variant], model_threads(variant, args.threads, cores))
                for variant in timed
            ]
            if workload == "compute" and "darkroom" in variants and not args.no_startup:
                print(f"[{time.time() - started:6.1f}s] darkroom start-up ({STARTUP_IMAGES} images)", flush=True)
                startup = measure_startup(dirs[STARTUP_IMAGES], work, args.timeout)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    for r in rows:
        raw = next((x for x in rows if x["variant"] == "raw" and x["workload"] == r["workload"]), None)
        rd = next((x for x in rows if x["variant"] == "ray-data" and x["workload"] == r["workload"]), None)
        r["ratio_vs_raw"], r["ratios_vs_raw"] = _ratios(r, raw, "steady")
        r["ratio_vs_ray_data"], r["ratios_vs_ray_data"] = _ratios(r, rd, "steady")
        r["marginal_ratio_vs_raw"], r["marginal_ratios_vs_raw"] = _ratios(r, raw, "marginal")
    targets = evaluate_targets(rows, pillow, startup)
    load_end = os.getloadavg()

    print()
    print_table(rows, pillow, startup)
    print()
    for t in targets:
        state = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(
            f"target  {t['target']}: {_fmt(t['value'], '.2f')} {t['unit']} (target "
            f"{'≤' if t['unit'] == 's' else '≥'} {t['threshold']}) → {state}"
        )
    loads = [r["load_before"] for row in rows for r in row["runs"]]
    busy = [r["busy_cores_before"] for row in rows for r in row["runs"] if r["busy_cores_before"] is not None]
    during = [r["others_cores_during"] for row in rows for r in row["runs"]]
    print(
        f"\nload average (1 min) before each run: min {min(loads, default=0):.2f}, max {max(loads, default=0):.2f}; "
        f"cores used by other processes just before / during each run: max {max(busy, default=0):.2f} / "
        f"{max(during, default=0):.2f}; "
        f"at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; total {time.time() - started:.0f} s"
    )

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": " ".join(
            [Path(sys.executable).name, "benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "quick": args.quick,
        "machine": machine_info(args.threads),
        "load_average": {
            "start": load_start,
            "end": load_end,
            "per_run_1min": loads,
            "per_run_busy_cores_before": busy,
            "per_run_others_cores_during": during,
        },
        "method": "steady img/s = outputs after the 2N run's first quarter / their time span (output files' mtimes); "
        "marginal img/s = N / (wall(2N) - wall(N)), wall = launch to exit of a fresh process; startup_s = wall(N) - "
        "N / steady; "
        "with --repeat R: medians over R alternating rounds, ratios taken per round",
        "rows": rows,
        "pillow_limit": pillow,
        "darkroom_startup": startup,
        "targets": targets,
        "total_seconds": time.time() - started,
    }
    if not args.no_save:
        results = Path(args.results_dir)
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"throughput-{result['date']}{'-quick' if args.quick else ''}.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
