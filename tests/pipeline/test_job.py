import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from models import default_registry
from pipeline.cli import main
from pipeline.job import JobError, load_job

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
name: t
input:
  uri: s3://archive/photos/
output:
  uri: s3://archive/restored/
  format: png
steps:
  - model: bicubic
    params: {scale: 2}
"""


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def problems(tmp_path, text):
    with pytest.raises(JobError) as err:
        load_job(write(tmp_path, text), default_registry())
    return err.value.problems


def test_good_job_loads_with_defaults(tmp_path):
    job = load_job(write(tmp_path, GOOD), default_registry())
    assert job.resources.batch_size == 4 and job.limits.max_pixels == 50_000_000
    assert job.steps[0].params == {"scale": 2}


def test_overrides_replace_fields(tmp_path):
    job = load_job(write(tmp_path, GOOD), default_registry(), {"input.uri": "/data/in", "output.uri": "/data/out"})
    assert (job.input.uri, job.output.uri) == ("/data/in", "/data/out")


def test_unknown_key_named_with_file_and_line(tmp_path):
    text = GOOD.replace("  format: png\n", "  format: png\n  colour: red\n")
    [line] = problems(tmp_path, text)
    assert line.startswith(f"{tmp_path / 'job.yaml'}:7: output.colour: unknown key")


def test_every_problem_listed_one_per_line(tmp_path):
    text = GOOD.replace("format: png", "format: gif").replace("name: t", "name: 'bad name'")
    lines = problems(tmp_path, text)
    assert len(lines) == 2
    assert any(": name:" in ln for ln in lines) and any("output.format" in ln and "'png'" in ln for ln in lines)


def test_unknown_model_suggests_the_close_name(tmp_path):
    [line] = problems(tmp_path, GOOD.replace("model: bicubic", "model: bicubik"))
    assert "steps.0.model" in line and "did you mean 'bicubic'" in line


def test_model_params_validated(tmp_path):
    lines = problems(tmp_path, GOOD.replace("{scale: 2}", "{scale: -1, sharpen: 3}"))
    assert any("steps.0.params.scale" in ln for ln in lines)
    assert any("steps.0.params.sharpen: unknown param" in ln for ln in lines)


def test_unknown_keys_and_params_suggest_the_close_name(tmp_path):
    text = (
        GOOD.replace("format: png", "fromat: png")
        .replace("{scale: 2}", "{scael: 2}\n    resources: {actors: {mni: 1}}")
        .replace("name: t", "name: t\nlimits: {max_pixel: 5}\nzzz: 1")
    )
    lines = problems(tmp_path, text)
    assert len(lines) == 5
    for field, kind, close in (
        ("output.fromat", "key", "format"),
        ("steps.0.params.scael", "param", "scale"),
        ("steps.0.resources.actors.mni", "key", "min"),
        ("limits.max_pixel", "key", "max_pixels"),
    ):
        assert any(ln.endswith(f"{field}: unknown {kind}; did you mean {close!r}?") for ln in lines), field
    assert any(ln.endswith("zzz: unknown key") for ln in lines)  # nothing close: no suggestion


def test_unknown_generate_params_suggest_the_close_name(tmp_path):
    text = (
        "name: g\noutput: {uri: /o}\ngenerate: {model: darkroom-ddpm-digits, samples: 1, seed: 0, params: {stesp: 4}}\n"
    )
    [line] = problems(tmp_path, text)
    assert line.endswith("generate.params.stesp: unknown param; did you mean 'steps'?")


def test_inline_credentials_refused(tmp_path):
    text = GOOD.replace(
        "  uri: s3://archive/photos/\n", "  uri: s3://archive/photos/\n  storage_options: {secret: abc}\n"
    )
    [line] = problems(tmp_path, text)
    assert "input.storage_options" in line and "credentials" in line


def test_invalid_yaml_and_missing_file(tmp_path):
    assert "not valid YAML" in problems(tmp_path, "name: [unclosed\n")[0]
    with pytest.raises(JobError, match="cannot read job file"):
        load_job(tmp_path / "nope.yaml", default_registry())


def test_empty_steps_refused(tmp_path):
    text = GOOD.split("steps:")[0] + "steps: []\n"
    [line] = problems(tmp_path, text)
    assert "steps" in line


def test_fingerprint_changes_with_params(tmp_path):
    reg = default_registry()
    a = load_job(write(tmp_path, GOOD), reg)
    b = load_job(write(tmp_path, GOOD.replace("{scale: 2}", "{scale: 3}")), reg)
    assert a.fingerprint(reg) != b.fingerprint(reg)
    assert a.fingerprint(reg) == load_job(write(tmp_path, GOOD), reg).fingerprint(reg)


def test_fingerprint_covers_a_ddpm_folders_scheduler_config(tmp_path):
    """Replacing a DDPM folder's scheduler_config.json changes the job fingerprint (its samples are
    then redone, and a run planned before cannot be resumed under it), as replacing its weights does."""
    import json
    import shutil

    from pipeline.job import parse_job

    shipped = Path(__file__).resolve().parents[2] / "models" / "weights" / "ddpm-digits"
    shutil.copytree(shipped, tmp_path / "ddpm")
    reg = default_registry()
    data = {
        "name": "g",
        "generate": {"model": "ddpm", "params": {"uri": str(tmp_path / "ddpm")}, "samples": 4, "seed": 1},
        "output": {"uri": str(tmp_path / "out")},
    }
    before = parse_job(data, reg).fingerprint(reg)
    assert parse_job(data, reg).fingerprint(reg) == before
    path = tmp_path / "ddpm" / "scheduler_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"beta_schedule": "squaredcos_cap_v2"}))
    assert parse_job(data, reg).fingerprint(reg) != before


def test_actor_ranges_and_step_resources(tmp_path):
    text = GOOD + "resources: {actors: 2}\n"
    job = load_job(write(tmp_path, text), default_registry())
    assert (job.resources.actors.min, job.resources.actors.max) == (2, 2)
    step = "  - model: identity\n    resources: {actors: {min: 1, max: 4}, gpus_per_actor: 0.25}\n"
    job = load_job(write(tmp_path, GOOD + step), default_registry())
    own = job.resources.for_step(job.steps[1])
    assert (own.actors.max, own.gpus_per_actor, own.cpus_per_actor) == (4, 0.25, 1)
    [line] = problems(tmp_path, GOOD + "resources: {actors: {min: 3, max: 1}}\n")
    assert "resources.actors" in line and "max must be ≥ min" in line


def test_precision_defaults_to_auto_and_refuses_unknown_formats(tmp_path):
    assert load_job(write(tmp_path, GOOD), default_registry()).resources.precision == "auto"
    job = load_job(write(tmp_path, GOOD + "resources: {precision: bf16}\n"), default_registry())
    assert job.resources.precision == "bf16"
    [line] = problems(tmp_path, GOOD + "resources: {precision: fp8}\n")
    assert "resources.precision" in line and "'fp16'" in line and "'bf16'" in line


def test_committed_job_reference_matches_the_models():
    from pathlib import Path

    from pipeline.reference import reference

    committed = (Path(__file__).parents[2] / "docs" / "job-reference.md").read_text()
    assert committed == reference(), "regenerate: python -m pipeline.reference > docs/job-reference.md"
    assert "`resources.tile`" in committed and "`steps[].resources.actors`" in committed


# ---- hostile job files: one line on stderr, exit 2, in bounded time and memory ----


def _cli(*args: str) -> tuple:
    """``darkroom ARGS`` in this process: (result, seconds, peak bytes Python allocated)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = CliRunner().invoke(main, list(args))
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, time.perf_counter() - started, peak


def _refused_in_bounds(path, command: str) -> str:
    """``darkroom COMMAND path`` exits 2 with one line on stderr, taking at most 5 s and 100 MB more
    than validating jobs/demo.yaml; returns the line."""
    demo, demo_seconds, demo_peak = _cli("validate", str(REPO / "jobs" / "demo.yaml"))
    assert demo.exit_code == 0, demo.output
    result, seconds, peak = _cli(command, str(path))
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert result.stdout == ""
    assert seconds < demo_seconds + 5 and peak < demo_peak + 100 * 2**20, (seconds, peak)
    return line


def _alias_bomb() -> str:
    """Billion laughs: 9 levels of 9 aliases each, 9**9 strings once expanded."""
    levels = ["      l0: &l0 [" + ", ".join(['"lol"'] * 9) + "]"]
    for i in range(1, 9):
        levels.append(f"      l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return GOOD.replace(
        "  uri: s3://archive/photos/\n",
        "  uri: s3://archive/photos/\n  storage_options:\n    config_kwargs:\n" + "\n".join(levels) + "\n",
    )


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_alias_bomb_in_storage_options_refused(tmp_path, command):
    line = _refused_in_bounds(write(tmp_path, _alias_bomb()), command)
    assert line.startswith(f"{tmp_path / 'job.yaml'}:") and "alias" in line


def test_benign_aliases_still_work(tmp_path):
    text = GOOD.replace("  format: png\n", "  format: png\n  storage_options: *opts\n").replace(
        "  uri: s3://archive/photos/\n", "  uri: s3://archive/photos/\n  storage_options: &opts {anon: true}\n"
    )
    job = load_job(write(tmp_path, text), default_registry())
    assert job.input.storage_options == job.output.storage_options == {"anon": True}


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_duplicate_keys_refused_naming_key_and_line(tmp_path, command):
    text = GOOD.replace("  format: png\n", "  format: png\n  format: jpeg\n")
    line = _refused_in_bounds(write(tmp_path, text), command)
    assert line == f"{tmp_path / 'job.yaml'}:7: output.format: duplicate key (first at line 6)"


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_non_utf8_job_file_refused_naming_the_byte(tmp_path, command):
    path = tmp_path / "job.yaml"
    path.write_bytes(GOOD.encode().replace(b"name: t", b"name: t\xe9"))
    line = _refused_in_bounds(path, command)
    assert line.startswith(f"{path}: not UTF-8 text") and "byte 7" in line


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_huge_job_file_refused_by_size(tmp_path, command):
    path = tmp_path / "job.yaml"
    with path.open("w") as fh:  # a valid job, then 15 MB of one long list
        fh.write(GOOD + "extra: [" + ",".join(["1"] * 7_500_000) + "]\n")
    line = _refused_in_bounds(path, command)
    assert line.startswith(f"{path}: ") and "larger than" in line and "64 KiB" in line


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_job_file_just_under_the_size_cap_stays_in_bounds(tmp_path, command):
    # The costliest file the cap lets through: as many YAML values as fit.
    body = "extra: [" + ",".join(["1"] * 30_000) + "]\n"
    assert len(GOOD + body) < 64 * 1024
    line = _refused_in_bounds(write(tmp_path, GOOD + body), command)
    assert line.startswith(f"{tmp_path / 'job.yaml'}:10: more than 10000 values")


def test_deeply_nested_job_file_refused(tmp_path):
    line = _refused_in_bounds(write(tmp_path, GOOD + "extra: " + "[" * 20_000 + "]" * 20_000 + "\n"), "validate")
    assert line.startswith(f"{tmp_path / 'job.yaml'}:")
