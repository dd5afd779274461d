import pytest

from models import default_registry
from pipeline.job import JobError, load_job

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


def test_committed_job_reference_matches_the_models():
    from pathlib import Path

    from pipeline.reference import reference

    committed = (Path(__file__).parents[2] / "docs" / "job-reference.md").read_text()
    assert committed == reference(), "regenerate: python -m pipeline.reference > docs/job-reference.md"
    assert "`resources.tile`" in committed and "`steps[].resources.actors`" in committed
