"""Throughput of darkroom against a raw loop, a one-image loop and naive Ray Data, side by side.

Same inputs, same model (from darkroom's registry), same machine, in one run:

  raw        one process, no Ray: decode → model (batches of 4) → PNG encode → write
  one-image  the same, one image at a time (like Real-ESRGAN's inference CLI)
  ray-data   ray.data.read_images → map_batches(callable class, batch_size=4,
             ActorPoolStrategy(size=1), num_cpus=1) → write_images(png); the callable sets torch's
             threads to darkroom's default threads_per_actor (the node's CPUs), so both Ray
             variants run the model on as many threads with the same one-CPU reservation
  darkroom   `darkroom run job.yaml --log-format json`, tuned: actors: 1, cpus_per_actor: 1,
             batch_size: 4, shard_size: N / 4, every other resource at its default. Shards of N / 4
             inputs make the N and 2N runs 4 and 8 shards, as an archive's run has many shards in
             flight; at the default 64 a small N would be one shard, one task decoding and encoding alone.
  darkroom-defaults  the same job with no resources at all: what a user who writes none gets
             (shard_size 64, cpus_per_task 0.5, threads_per_actor = the node's CPUs, …)
  darkroom:FIELD=VALUE;…  (optional, not in the default list) the tuned job with resources
             overridden, to compare settings side by side, e.g. `darkroom:threads_per_actor=1` or
             `darkroom:cpus_per_task=0.5;tile=0`; `darkroom-defaults:FIELD=VALUE` overrides the defaults
  pillow     (decode workload only) decode + PNG encode, no model: the limit a decode-bound pipeline
             can approach (per-core rate × cores, and ``cores`` processes measured). The limit is
             taken with darkroom's own encoder (``pipeline.images.encode_png``, libpng level 1), so
             a faster encoder cannot flatter darkroom; Pillow's level-1 encoder is reported beside it.

Every darkroom variant runs as ``throughput.py --child darkroom JOB``, which calls the
``darkroom`` command's own entry point (``darkroom run JOB --log-format json``) in-process and,
after the run, reads Ray's task timeline (``ray.timeline()``) before the process exits. The
timeline (read until it holds every model call of the run: workers send their events to Ray's
GCS about once a second; at most ``TRACE_WAIT`` s) is timed by the child and taken off the run's
wall time.

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

Threads and encoders (``THREADS``/``ENCODERS`` below; the table prints both per row): the
machine's cores (``os.cpu_count()``) are the budget of every variant. The raw and one-image
loops give torch all of them (``--threads``). The Ray variants run on a local Ray with that many
CPUs and one model actor reserving one CPU whose torch threads are the node's CPUs (darkroom's
default threads_per_actor; darkroom's actor may drop to its one reserved CPU's thread while that
measures faster, pipeline.threads; Ray Data's keeps them). Every variant decodes with Pillow.
The loops and darkroom encode PNG with libpng through imagecodecs (level 1, Paeth, RLE:
``pipeline.images.encode_png``); Ray Data's write_images uses Pillow's default (zlib level 6) and
has no option to change it.

Where the time goes (``--no-breakdown`` skips it): per image, for the raw loop, its inline
timers (read, decode, model, encode, write); for darkroom, the manifest's per-image stage
seconds (t_read … t_write) and, from Ray's timeline, the model actor's calls split into
transfer in (deserialising the batch from the object store), its execution (the forward pass
is the manifest's t_model; the rest is the chain's conversions and tiling), and the result's
store into the object store; the actor's idle time between its first and last call; the shard
tasks' time not spent in their own stages (waiting on the actor, the result's way back, plan
load, commit). Darkroom's stages overlap (shard tasks run beside the actor), so they do not add
up to its wall time per image: when the actor is the bottleneck, its busy + idle time is.

Shared machines: before each run the CPU other processes use is sampled (/proc/stat), and
during it the CPU time of other people's processes is counted (/proc/<pid>/stat); both are
in the JSON and the table's ``others`` column, so a disturbed row can be recognised. The
children's own clocks give a third estimate (``inner_steady_img_s``: the marginal rate of loop
time, Ray Data pipeline time, darkroom planned → finished) that excludes process start-up.
``--repeat R`` runs R rounds, every variant once per round (alternating, so a slow spell of the
machine hits all variants of a round alike); rates are medians over the rounds, ratios are
taken within each round, and every target must hold in every round (the minimum over rounds
is what is checked, not the median). ``make bench`` runs 5 rounds.

    .venv/bin/python benchmarks/throughput.py --repeat 5      # full run (make bench), ~50 min on 2 cores
    .venv/bin/python benchmarks/throughput.py --quick         # smoke run, small N
    .venv/bin/python benchmarks/throughput.py --quick --variants raw,one-image --workloads compute --no-save
    .venv/bin/python benchmarks/throughput.py --variants raw,darkroom,darkroom-defaults,ray-data \
        --workloads compute --no-startup --repeat 5
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
VARIANTS = ["raw", "one-image", "ray-data", "darkroom", "darkroom-defaults", "pillow"]
OPTIONAL_VARIANTS = ["darkroom:FIELD=VALUE;…", "darkroom-defaults:FIELD=VALUE;…"]
STARTUP_IMAGES = 10
TRACE_WAIT = 10.0  # seconds a darkroom child waits for its run's task events to reach Ray's GCS
PNG_LEVEL = 1  # Pillow's compress_level in the pillow variant's extra figure (its limit uses encode_png)
DARKROOM_ENCODER = "libpng L1 (encode_png)"
ENCODERS = {  # the PNG encoder each variant writes its outputs with (every variant decodes with Pillow)
    "raw": DARKROOM_ENCODER,
    "one-image": DARKROOM_ENCODER,
    "ray-data": "Pillow L6 (write_images)",
    "darkroom": DARKROOM_ENCODER,
    "pillow": DARKROOM_ENCODER,
}


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
    """Naive Ray Data; the model's torch threads are ``args.threads`` (the parent passes
    darkroom's default threads_per_actor), its actor reserves one CPU like darkroom's."""
    import logging

    import ray

    t0 = time.perf_counter()
    ray.init(logging_level=logging.WARNING, include_dashboard=False)
    t1 = time.perf_counter()
    ds = ray.data.read_images(args.input)
    ds = ds.map_batches(
        _Upscale,
        fn_constructor_args=(args.workload, args.threads),
        batch_size=BATCH,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    )
    ds.write_images(args.output, column="image", file_format="png")
    t2 = time.perf_counter()
    ray.shutdown()
    return {
        "ray_init_s": t1 - t0,
        "pipeline_s": t2 - t1,
        "shutdown_s": time.perf_counter() - t2,
        "torch_threads": args.threads,
    }


def child_darkroom(args) -> int:
    """``darkroom run JOB --log-format json`` through the command's own entry point, in this
    process; then one JSON line ``{"event": "bench_trace", …}``: the Ray timeline's totals
    (``timeline_totals``) and the seconds reading it took (``trace_s``, taken off the run's wall
    time by the parent). Workers send their task events to Ray's GCS about once a second, later
    on a loaded machine, so the timeline is read again (each read waits 1 s) until it holds
    ``args.expect_calls`` model calls, for at most ``TRACE_WAIT`` seconds (``complete`` says
    whether it did). Returns the command's exit code."""
    from pipeline.cli import main as darkroom

    code = 0
    try:
        darkroom.main(["run", args.input, "--log-format", "json"], prog_name="darkroom")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    totals: dict = {}
    t0 = time.perf_counter()
    if args.trace:
        import ray

        while ray.is_initialized():
            totals = timeline_totals(ray.timeline())
            totals["complete"] = totals["infer_calls"] >= (args.expect_calls or 1)
            if totals["complete"] or time.perf_counter() - t0 > TRACE_WAIT:
                break
    print(json.dumps({"event": "bench_trace", "trace_s": time.perf_counter() - t0, "timeline": totals}), flush=True)
    return code


def timeline_totals(events: list[dict]) -> dict:
    """Seconds summed over a ``ray.timeline()`` event list (chrome-trace dicts: cat, tid, ts and
    dur in µs) for darkroom's model actors and shard tasks.

    Model actors: every ``task::<Actor>.infer`` call (``infer_calls``, ``infer_s``), split by
    the phase events Ray records inside it on the same worker row: ``deserialize_s`` (the batch
    fetched from the object store and unpickled), ``execute_s`` (the method), ``store_s`` (the
    results pickled into the object store); ``window_s``: first call's start to last call's end,
    per actor, summed; ``idle_s`` = window − calls. Shard tasks: ``task::process_shard`` events
    (``shard_tasks``, ``shard_task_s``).
    """
    import bisect

    rows: dict[str, list[dict]] = {}
    for e in events:
        rows.setdefault(e.get("tid", ""), []).append(e)
    keys = ("infer_s", "deserialize_s", "execute_s", "store_s", "window_s", "shard_task_s")
    out: dict = dict.fromkeys(keys, 0.0) | {"infer_calls": 0, "actors": 0, "shard_tasks": 0}
    phases = {
        "task:deserialize_arguments": "deserialize_s",
        "task:execute": "execute_s",
        "task:store_outputs": "store_s",
    }
    for row in rows.values():
        shards = [e for e in row if e.get("cat") == "task::process_shard"]
        out["shard_tasks"] += len(shards)
        out["shard_task_s"] += sum(e["dur"] for e in shards) / 1e6
        calls = sorted(
            (e["ts"], e["ts"] + e["dur"])
            for e in row
            if e.get("cat", "").startswith("task::") and e["cat"].endswith(".infer")
        )
        if not calls:
            continue
        out["actors"] += 1
        out["infer_calls"] += len(calls)
        out["infer_s"] += sum(end - start for start, end in calls) / 1e6
        out["window_s"] += (max(end for _, end in calls) - calls[0][0]) / 1e6
        starts = [start for start, _ in calls]
        for e in row:
            key = phases.get(e.get("cat"))
            if key is None:
                continue
            i = bisect.bisect_right(starts, e["ts"] + 1) - 1  # the call that started last before it (1 µs slack)
            if i >= 0 and e["ts"] + e["dur"] <= calls[i][1] + 1:
                out[key] += e["dur"] / 1e6
    out["idle_s"] = out["window_s"] - out["infer_s"]
    return out


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


def job_resources_of(variant: str, workload: str) -> dict:
    """The ``resources`` a darkroom variant's job file gets (see ``write_job``)."""
    tuned = {"actors": 1, "cpus_per_actor": 1, "batch_size": BATCH, "shard_size": WORKLOADS[workload]["shard_size"]}
    defaults = variant.partition(":")[0] == "darkroom-defaults"
    return ({} if defaults else tuned) | darkroom_overrides(variant)


def model_calls(n: int, resources: dict) -> int:
    """Model actor calls a one-step run of ``n`` inputs makes: shards of ``shard_size``, each in
    batches of ``batch_size`` (the job schema's defaults where ``resources`` has none)."""
    from pipeline.job import Resources

    r = Resources(**{k: v for k, v in resources.items() if k in ("shard_size", "batch_size")})
    return sum(-(-min(r.shard_size, n - start) // r.batch_size) for start in range(0, n, r.shard_size))


def write_job(
    path: Path,
    workload: str,
    input_dir: Path,
    output_dir: Path,
    overrides: dict | None = None,
    defaults: bool = False,
) -> None:
    """The benchmark's job file: resources tuned (one actor of one CPU, batch 4, shards of N / 4),
    or none at all with ``defaults`` (darkroom's defaults), then ``overrides``."""
    import yaml

    spec = WORKLOADS[workload]
    resources = job_resources_of("darkroom-defaults" if defaults else "darkroom", workload) | (overrides or {})
    job = {
        "name": f"bench-{workload}",
        "input": {"uri": str(input_dir) + "/"},
        "output": {"uri": str(output_dir) + "/", "format": "png"},
        "steps": [{"model": spec["model"], "params": spec["params"]}],
    } | ({"resources": resources} if resources else {})
    path.write_text(yaml.safe_dump(job, sort_keys=False))


def _manifest_stages(output_dir: Path) -> dict:
    """Per-image mean of darkroom's manifest stage timings (t_read … t_write)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from pipeline import layout

    files = [str(p) for p in Path(layout.manifest_dir(str(output_dir))).rglob("*.parquet")]
    if not files:
        return {}
    cols = ["t_read", "t_decode", "t_model", "t_encode", "t_write"]
    table = pads.dataset(files, format="parquet").to_table(columns=cols + ["status"])
    means = {c: pc.mean(table[c]).as_py() for c in cols}
    means["ok_rows"] = int(pc.sum(pc.equal(table["status"], "ok")).as_py() or 0)
    return means


def model_threads(variant: str, loop_threads: int, cores: int) -> int:
    """torch threads of the variant's model: the loops' --threads; darkroom's threads_per_actor,
    by default the node's CPUs (one CPU actor on a one-node cluster), never fewer than
    cpus_per_actor; Ray Data's actor the same as darkroom's default (set in its callable class,
    since Ray would give a one-CPU worker one thread)."""
    if variant in ("raw", "one-image"):
        return loop_threads
    if variant.startswith("darkroom"):
        overrides = darkroom_overrides(variant)
        return int(overrides.get("threads_per_actor") or max(cores, overrides.get("cpus_per_actor", 1)))
    return cores


def encoder(variant: str) -> str:
    """The PNG encoder a variant writes with (``ENCODERS``; darkroom's variants share one)."""
    return ENCODERS["darkroom" if variant.startswith("darkroom") else variant]


def run_variant(
    variant: str, workload: str, input_dir: Path, work: Path, n: int, threads: int, timeout: float, trace: bool = True
) -> dict:
    """Run one variant on ``input_dir`` in a fresh process; wall time from launch to exit (less
    the time a darkroom child spent reading Ray's timeline afterwards, with ``trace``)."""
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in variant)
    out = work / f"out-{slug}-{workload}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    log = work / f"log-{slug}-{workload}-{n}.txt"
    load_before = os.getloadavg()[0]
    busy_before = busy_cores()
    if variant.startswith("darkroom"):
        job = work / f"job-{slug}-{workload}-{n}.yaml"
        defaults = variant.partition(":")[0] == "darkroom-defaults"
        write_job(job, workload, input_dir, out, darkroom_overrides(variant), defaults=defaults)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "darkroom", "--input", str(job)]
        calls = model_calls(n, job_resources_of(variant, workload))
        cmd += ["--trace", "--expect-calls", str(calls)] if trace else []
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
            str(model_threads(variant, threads, os.cpu_count() or 1)),
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
        trace = next((e for e in events if e.get("event") == "bench_trace"), {})
        events = [e for e in events if "time" in e and "event" in e]
        wall -= trace.get("trace_s", 0.0)
        at = {e["event"]: e["time"] - launched_epoch for e in events if e["event"] != "shard"}
        shards = [e["time"] - launched_epoch for e in events if e["event"] == "shard"]
        finished = next((e for e in events if e["event"] == "finished"), {})
        detail = {
            "trace_s": trace.get("trace_s"),
            "timeline": trace.get("timeline") or {},
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
    from pipeline import layout

    images = Path(layout.images_dir(str(out)))
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
    """The decode limit: one process's Pillow decode + darkroom's PNG encode rate × cores, and
    ``cores`` processes measured; the same with Pillow's level-1 encoder as extra figures."""
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
    per_core = single["images"] / (single["decode_s"] + single["encode_darkroom_s"])
    per_core_pillow = single["images"] / (single["decode_s"] + single["encode_s"])
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
    images = sum(p["images"] for p in parts)
    return {
        "encoder": DARKROOM_ENCODER,
        "per_core_img_s": per_core,
        "cores": cores,
        "limit_img_s": per_core * cores,  # THE limit: darkroom's own encoder
        "measured_parallel_img_s": images / max(p["decode_s"] + p["encode_darkroom_s"] for p in parts),
        "decode_ms_per_image": 1000 * single["decode_s"] / single["images"],
        "encode_ms_per_image": 1000 * single["encode_darkroom_s"] / single["images"],
        # Extra: the same with Pillow's level-1 encoder (the limit before 2026-12; darkroom does not use it).
        "pillow_encoder_limit_img_s": per_core_pillow * cores,
        "pillow_encoder_measured_parallel_img_s": images / max(p["decode_s"] + p["encode_s"] for p in parts),
        "pillow_encoder_ms_per_image": 1000 * single["encode_s"] / single["images"],
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
                "breakdown": stage_breakdown(variant, 2 * n, pair[2 * n]["detail"], pair[2 * n]["span_img_s"]),
            }
        )
    med = {key: _median([p[key] for p in per_round]) for key in ("wall_n", "wall_2n", "steady", "marginal", "inner")}
    steady = med["steady"]
    breakdowns = [p["breakdown"] for p in per_round if p["breakdown"]]
    return {
        "variant": variant,
        "workload": workload,
        "model": spec["model"],
        "params": spec["params"],
        "input_size": list(spec["size"]),
        "model_threads": threads,
        "encoder": encoder(variant),
        "n": n,
        "rounds": len(rounds),
        "wall_s_n": med["wall_n"],
        "wall_s_2n": med["wall_2n"],
        "steady_img_s": steady,
        "startup_s": med["wall_n"] - n / steady if steady else None,
        "marginal_img_s": med["marginal"],
        "inner_steady_img_s": med["inner"],
        # seconds per image per stage (see stage_breakdown), each the median over rounds
        "breakdown": (
            {k: _median([b.get(k) for b in breakdowns]) for k in BREAKDOWN}
            | {"actor_idle_from": next((b["actor_idle_from"] for b in breakdowns if "actor_idle_from" in b), None)}
            if breakdowns
            else None
        ),
        "per_round": per_round,
        "runs": runs,
    }


# key → label, in pipeline order; a variant's figure is None where it has no such stage
BREAKDOWN = {
    "read": "read",
    "decode": "decode",
    "to_actor": "batch into the actor (object store → actor, unpickle)",
    "model": "model forward",
    "actor_other": "actor: rest of its call (conversions, tiling)",
    "back": "results into the object store (pickle)",
    "encode": "encode",
    "write": "write",
    "task_wait": "shard tasks' other time (waiting on the actor, results back, commit)",
    "loop_other": "loop's other time",
    "actor_busy": "actor busy (its calls, all of the above inside it)",
    "actor_idle": "actor idle (between its first and last call)",
    "wall": "wall per image (1 / steady)",
}
LOOP_STAGES = ("read", "decode", "model", "encode", "write")


def stage_breakdown(variant: str, n: int, detail: dict, steady: float | None) -> dict | None:
    """Seconds per image per ``BREAKDOWN`` stage of one run of ``n`` inputs (None: no figures).

    Loops: their inline timers over ``n``; the stages that only exist between processes (to and
    from the actor, the actor's idle time, a shard task's waiting) are 0, ``loop_other`` is the
    loop's time outside its timers. Darkroom: the manifest's per-image means (``t_read`` …
    ``t_write``) and the Ray timeline's totals (``timeline_totals``) over ``n``; its stages
    overlap, so they do not add up to ``wall`` (when the actor is the bottleneck, busy + idle
    does). Without a complete timeline ``actor_idle`` is wall − ``t_model`` (everything the actor
    did besides its forward passes, idle time included) and ``actor_idle_from`` says so. Ray
    Data: None (no per-stage timers)."""
    out: dict = dict.fromkeys(BREAKDOWN)
    out["wall"] = 1 / steady if steady else None
    if variant in ("raw", "one-image"):
        stages = detail.get("stage_s")
        if not stages:
            return None
        out |= {k: stages[k] / n for k in LOOP_STAGES}
        out |= {"to_actor": 0.0, "actor_other": 0.0, "back": 0.0, "task_wait": 0.0, "actor_idle": 0.0}
        if detail.get("loop_s") is not None:
            out["loop_other"] = detail["loop_s"] / n - sum(out[k] for k in LOOP_STAGES)
        return out
    if not variant.startswith("darkroom"):
        return None
    means = detail.get("manifest_mean_stage_s") or {}
    out |= {k: means.get(f"t_{k}") for k in LOOP_STAGES}
    timeline = detail.get("timeline") or {}
    if timeline.get("infer_calls") and timeline.get("complete", True):  # a partial timeline would understate
        out["to_actor"] = timeline["deserialize_s"] / n
        out["back"] = timeline["store_s"] / n
        if out["model"] is not None:
            out["actor_other"] = timeline["execute_s"] / n - out["model"]
        out["actor_busy"] = timeline["infer_s"] / n
        out["actor_idle"] = timeline["idle_s"] / n
    elif out["wall"] is not None and out["model"] is not None:
        # No (complete) timeline: the actor's time outside its forward passes, from wall and t_model
        # alone (transfers, the rest of its calls and idle time together), marked as such.
        out["actor_idle"] = out["wall"] - out["model"]
        out["actor_idle_from"] = "wall - t_model (no timeline)"
    own = [out[k] for k in ("read", "decode", "encode", "write")]
    if timeline.get("shard_tasks") and None not in own:
        out["task_wait"] = timeline["shard_task_s"] / n - sum(own)
    return out


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
        f"{'variant':<{width}} {'workload':<8} {'threads':>7} {'encoder':<24} {'wall s N':>9} {'wall s 2N':>9} "
        f"{'N':>4} "
        f"{'steady img/s':>12} "
        f"{'startup s':>9} {'vs raw':>7} {'vs RayData':>10} {'marginal img/s':>14} {'marginal vs raw':>15} "
        f"{'inner img/s':>11} {'others':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['variant']:<{width}} {r['workload']:<8} {r['model_threads']:>7} {r['encoder']:<24} "
            f"{r['wall_s_n']:>9.2f} "
            f"{r['wall_s_2n']:>9.2f} {r['n']:>4} "
            f"{_fmt(r['steady_img_s'], '.3f'):>12} {_fmt(r['startup_s'], '.2f'):>9} "
            f"{_fmt(r['ratio_vs_raw'], '.2f'):>7} {_fmt(r['ratio_vs_ray_data'], '.2f'):>10} "
            f"{_fmt(r['marginal_img_s'], '.3f'):>14} {_fmt(r['marginal_ratio_vs_raw'], '.2f'):>15} "
            f"{_fmt(r['inner_steady_img_s'], '.3f'):>11} "
            f"{max(x['others_cores_during'] for x in r['runs']):>6.2f}"
        )
    print(
        "(threads: torch threads of the model; encoder: the PNG encoder of the outputs (all decode with Pillow);\n"
        " steady: the 2N run's outputs after its first quarter over their time span;\n"
        " marginal: N / (wall(2N) - wall(N)); inner: the same from the children's own clocks; with rounds > 1\n"
        " every figure is the median over rounds and each ratio the median of per-round ratios (the targets below\n"
        " check every round); others: most CPU cores other people's processes used during one of the row's runs)"
    )
    if pillow:
        print(
            f"limit      decode   Pillow decode + {pillow['encoder']} encode {pillow['per_core_img_s']:.3f} img/s per "
            f"core × {pillow['cores']} = {pillow['limit_img_s']:.3f} img/s "
            f"(measured with {pillow['cores']} processes: {pillow['measured_parallel_img_s']:.3f}); "
            f"decode {pillow['decode_ms_per_image']:.0f} ms + encode {pillow['encode_ms_per_image']:.0f} ms per image"
        )
        print(
            f"           (extra: with Pillow's level-1 encoder, {pillow['pillow_encoder_ms_per_image']:.0f} ms, "
            f"{pillow['pillow_encoder_limit_img_s']:.3f} img/s; measured "
            f"{pillow['pillow_encoder_measured_parallel_img_s']:.3f})"
        )
    if startup:
        print(
            f"start-up   darkroom run, {startup['images']} images: first output after "
            f"{_fmt(startup['first_output_s'], '.2f')} s, done after {startup['wall_s']:.2f} s"
        )


def print_breakdown(rows: list[dict]) -> None:
    """Per workload and darkroom variant: ms per image per stage, raw loop vs darkroom, and the difference."""
    for dark in rows:
        raw = next((r for r in rows if r["variant"] == "raw" and r["workload"] == dark["workload"]), None)
        if not dark["variant"].startswith("darkroom") or not dark.get("breakdown"):
            continue
        base = (raw or {}).get("breakdown") or {}
        label = max(len(v) for v in BREAKDOWN.values())
        print(f"\nwhere the time goes: {dark['workload']}, ms per image (median over rounds, 2N run)")
        print(f"{'stage':<{label}} {'raw':>9} {dark['variant']:>18} {'difference':>10}")
        for key, name in BREAKDOWN.items():
            a, b = base.get(key), dark["breakdown"].get(key)
            if key == "actor_idle" and dark["breakdown"].get("actor_idle_from"):
                name = f"actor idle + transfers ({dark['breakdown']['actor_idle_from']})"
            diff = None if a is None or b is None else b - a
            ms = [None if x is None else 1000 * x for x in (a, b, diff)]
            print(f"{name:<{label}} {_fmt(ms[0], '.1f'):>9} {_fmt(ms[1], '.1f'):>18} {_fmt(ms[2], '+.1f'):>10}")
    if any(r.get("breakdown") for r in rows if r["variant"].startswith("darkroom")):
        print(
            "(darkroom: manifest t_* means and Ray's timeline of the model actor and shard tasks; its stages overlap,\n"
            " so they do not add up to its wall: while the actor is the bottleneck, actor busy + idle does)"
        )


def every_round(name: str, values: list, threshold: float, unit: str = "×") -> dict:
    """A target that must hold in every round: ``values`` one figure per round (None: not
    measured in that round). ``value`` is the worst round; ``met`` False as soon as one round
    is under ``threshold``, None while a round has no figure (or there are none), else True."""
    known = [v for v in values if v is not None and v == v]  # nan: a disturbed round
    if any(v < threshold for v in known):
        met = False
    elif not values or len(known) < len(values):
        met = None
    else:
        met = True
    return {
        "target": name,
        "rule": "every round",
        "per_round": [v if v is not None and v == v else None for v in values],
        "value": min(known) if known else None,
        "threshold": threshold,
        "unit": unit,
        "met": met,
    }


def evaluate_targets(rows: list[dict], pillow: dict | None, startup: dict | None) -> list[dict]:
    """Issue 18's targets, each in every round: compute ≥ 0.90 × raw (steady; marginal as a
    cross-check) and ≥ 1.2 × Ray Data at equal threads, for the tuned job and the defaults;
    decode ≥ 0.5 × the decode limit with darkroom's own encoder; first output ≤ 15 s."""
    by = {(r["variant"], r["workload"]): r for r in rows}
    targets = []
    for variant in ("darkroom", "darkroom-defaults"):
        dr = by.get((variant, "compute"))
        if dr:
            targets.append(every_round(f"compute: {variant} steady / raw steady", dr["ratios_vs_raw"], 0.90))
            targets.append(
                every_round(
                    f"compute: {variant} marginal / raw marginal (cross-check)", dr["marginal_ratios_vs_raw"], 0.90
                )
            )
            targets.append(
                every_round(
                    f"compute: {variant} steady / Ray Data steady (equal threads)", dr["ratios_vs_ray_data"], 1.2
                )
            )
        dd = by.get((variant, "decode"))
        if dd and pillow:
            limit = pillow["limit_img_s"]
            targets.append(
                every_round(
                    f"decode: {variant} steady / decode limit (darkroom's encoder)",
                    [None if p["steady"] is None else p["steady"] / limit for p in dd["per_round"]],
                    0.5,
                )
            )
    if startup:
        first = startup["first_output_s"]
        targets.append(
            {
                "target": f"first output of a {startup['images']}-image job",
                "rule": "once",
                "per_round": [first],
                "value": first,
                "threshold": 15.0,
                "unit": "s",
                "met": None if first is None else first <= 15.0,
            }
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
    ap.add_argument(
        "--no-breakdown",
        action="store_true",
        help="darkroom variants: skip reading Ray's timeline after each run (no actor/shard-task figures)",
    )
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/throughput-<date>.json")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per child process")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (inputs, logs)")
    # Internal: run one variant in this (fresh) process.
    ap.add_argument("--child", choices=["raw", "one-image", "ray-data", "pillow", "darkroom"], help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--expect-calls", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--part", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child == "darkroom":
        return child_darkroom(args)
    if args.child:
        fn = {"raw": child_loop, "one-image": child_loop, "ray-data": child_ray_data, "pillow": child_pillow}[
            args.child
        ]
        print(json.dumps(fn(args)), flush=True)
        return 0

    variants = [v for v in args.variants.split(",") if v]
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [v for v in variants if v not in VARIANTS and not v.startswith(("darkroom:", "darkroom-defaults:"))] + [
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
                print(f"[{time.time() - started:6.1f}s] decode limit / {workload} (N={2 * n})", flush=True)
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
                        r = run_variant(
                            variant, workload, dirs[k], work, k, args.threads, args.timeout, not args.no_breakdown
                        ) | {"round": round_}
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
    print_breakdown(rows)
    print()
    for t in targets:
        state = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        rule = "" if t["rule"] == "once" else " in every round"
        rounds = "" if t["rule"] == "once" else f"rounds {' '.join(_fmt(v, '.2f') for v in t['per_round'])}, min "
        print(
            f"target  {t['target']}: {rounds}{_fmt(t['value'], '.2f')} {t['unit']} (target "
            f"{'≤' if t['unit'] == 's' else '≥'} {t['threshold']}{rule}) → {state}"
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
        "with --repeat R: medians over R alternating rounds, ratios taken per round, targets checked in every "
        "round (value = the worst round); decode limit = Pillow decode + darkroom's encoder (encode_png); "
        "breakdown = seconds per image per stage of the 2N run (raw: inline timers; darkroom: manifest t_* "
        "means + Ray timeline of the model actor and shard tasks)",
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
