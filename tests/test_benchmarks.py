"""benchmarks/throughput.py keeps running: a --quick smoke run of its two Ray-free variants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from tests.scripts import load_benchmark

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("throughput")


@pytest.mark.timeout(120)
def test_quick_run_of_raw_and_one_image(tmp_path):
    """The whole parent/child machinery on the compute workload (N=2 and 4): the table and the JSON."""
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--variants",
        "raw,one-image",
        "--workloads",
        "compute",
        "--results-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = tmp_path.glob("throughput-*-quick.json")
    result = json.loads(path.read_text())
    rows = {(r["variant"], r["workload"]): r for r in result["rows"]}
    assert set(rows) == {("raw", "compute"), ("one-image", "compute")}
    for row in rows.values():
        assert 0 < row["wall_s_n"] and 0 < row["wall_s_2n"]
        assert row["runs"][1]["detail"]["stage_s"]["model"] > 0
    # Timing is not asserted (no timed unit tests). With N=2 and 4 there are too few outputs for an
    # in-run rate (None by design), and on a busy machine wall(2N) may not exceed wall(N) (marginal
    # None). Ratios must still be derived from whatever was measured.
    raw, one = rows[("raw", "compute")], rows[("one-image", "compute")]
    for key, ratio in (("steady_img_s", "ratio_vs_raw"), ("marginal_img_s", "marginal_ratio_vs_raw")):
        if raw[key] is None:
            assert raw[ratio] is None and one[ratio] is None
        else:
            assert raw[ratio] == 1.0
            assert one[ratio] == pytest.approx(one[key] / raw[key]) if one[key] is not None else one[ratio] is None
    assert result["machine"]["nproc"] >= 1 and result["machine"]["torch"] and result["load_average"]["start"]
    assert "steady img/s" in proc.stdout


def test_decode_workload_inputs_and_loop(tmp_path, bench):
    """The decode workload's JPEG inputs and the raw loop over them, in this process (no start-up to pay)."""
    dirs = bench.make_inputs(tmp_path / "in", "decode", [1, 2])
    assert sorted(p.name for p in dirs[2].iterdir()) == ["img0000.jpg", "img0001.jpg"]
    args = Namespace(child="raw", workload="decode", input=str(dirs[1]), output=str(tmp_path / "out"), threads=1)
    import torch

    threads = torch.get_num_threads()
    try:
        detail = bench.child_loop(args)
    finally:
        torch.set_num_threads(threads)  # child_loop sets the process's torch threads
    assert detail["stage_s"]["encode"] > 0 and bench.count_outputs(tmp_path / "out") == 1
    from PIL import Image

    with Image.open(tmp_path / "out" / "img0000.jpg.png") as im:
        assert im.size == (2304, 1728)


def test_in_run_rate_skips_the_first_quarter_of_outputs(tmp_path, bench):
    # 12 outputs: 3 during a slow start (10 s apart), then one every 0.5 s.
    times = [0, 10, 20] + [20 + 0.5 * k for k in range(1, 10)]
    for i, t in enumerate(times):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 + t, 1_000_000 + t))
    (tmp_path / ".hidden.png").write_bytes(b"x")  # a temporary file, not an output
    assert bench.span_rate(tmp_path) == pytest.approx(2.0)  # outputs 4…12 over 4.5 s
    assert bench.span_rate(tmp_path / "missing") is None


def test_rounds_give_medians_and_per_round_ratios(bench):
    def runs(spans: list[float], walls: list[tuple[float, float]]) -> list[dict]:
        return [
            {"round": k, "n": n, "wall_s": w, "span_img_s": span, "detail": {}}
            for k, (span, pair) in enumerate(zip(spans, walls))
            for n, w in zip((10, 20), pair)
        ]

    # In-run rates: darkroom is 0.8 × raw in every round while the machine's speed changes.
    raw = bench.summarise("raw", "compute", 10, runs([10, 5, 2.5], [(5, 6), (5, 7), (5, 9)]), 2)
    dark = bench.summarise("darkroom", "compute", 10, runs([8, 4, 2], [(8, 10), (8, 10.5), (8, 13)]), 2)
    assert raw["rounds"] == 3 and raw["steady_img_s"] == 5 and raw["wall_s_2n"] == 7
    assert raw["marginal_img_s"] == pytest.approx(5.0) and raw["startup_s"] == pytest.approx(5 - 10 / 5)
    median, per_round = bench._ratios(dark, raw, "steady")
    assert median == pytest.approx(0.8) and per_round == pytest.approx([0.8, 0.8, 0.8])
    assert bench._ratios(dark, raw, "marginal")[0] == pytest.approx(0.8)  # 5/10, 4/5, 2/2.5
    assert bench._ratios(dark, None, "steady") == (None, [])


def test_darkroom_variants_override_job_resources(tmp_path, bench):
    assert bench.darkroom_overrides("darkroom") == {}
    assert bench.darkroom_overrides("darkroom:threads_per_actor=1;cpus_per_task=0.5") == {
        "threads_per_actor": 1,
        "cpus_per_task": 0.5,
    }
    with pytest.raises(ValueError):
        bench.darkroom_overrides("darkroom:tile")
    bench.write_job(tmp_path / "job.yaml", "compute", tmp_path / "in", tmp_path / "out", {"tile": 0})
    from models import default_registry
    from pipeline.job import load_job

    job = load_job(tmp_path / "job.yaml", default_registry())
    assert job.resources.tile == 0 and job.resources.batch_size == bench.BATCH
    assert bench.model_threads("darkroom:threads_per_actor=1", 2, 2) == 1 and bench.model_threads("darkroom", 2, 2) == 2


@pytest.mark.timeout(240)
def test_big_image_reports_peak_memory_against_the_output(tmp_path):
    """benchmarks/big_image.py end to end on a small photo (the figures are not asserted)."""
    script = REPO / "benchmarks" / "big_image.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--width", "96", "--height", "64", "--tile", "32", "--no-save"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "output 384×256" in proc.stdout and "× output" in proc.stdout


def test_process_memory_is_read_for_a_whole_process_tree():
    big_image = load_benchmark("big_image")
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(30)"])
    try:
        deadline = time.time() + 20
        while (m := big_image.memory_of(child.pid)) is None or m["hwm"] < 64 << 20:
            assert time.time() < deadline, m
            time.sleep(0.1)
        assert child.pid in big_image.process_tree(os.getpid())
        assert m["pss"] >= 64 << 20 and m["title"].startswith("python")
    finally:
        child.kill()
        child.wait()
    assert big_image.memory_of(child.pid) is None
