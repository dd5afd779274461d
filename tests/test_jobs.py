"""Every ready-to-run job file in jobs/, and every job the docs show, is valid against the shipped
registry and against the JSON schema that `darkroom schema` prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from models import default_registry
from pipeline.cli import main
from pipeline.job import Job, load_job, parse_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


def test_there_are_job_files():
    assert {"demo.yaml", "generate-digits.yaml", "nightly-restore.yaml"} <= {p.name for p in JOBS}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_is_valid(path):
    job = load_job(path, default_registry())
    assert job.name and job.output.uri


# ---- the JSON schema (`darkroom schema`, for editors) accepts every job the docs show ----

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


# What a fragment (e.g. only `resources:`) is completed with before it is checked.
BASE_JOB = {"name": "doc", "input": {"uri": "in/"}, "output": {"uri": "out/"}, "steps": [{"model": "identity"}]}


def _doc_jobs() -> list[tuple[str, dict, bool]]:
    """Fenced ```yaml blocks of README.md and docs/*.md that are jobs or parts of one (every top-level
    key a job field): (where, the job, whether the block is a whole job), fragments completed from BASE_JOB."""
    found = []
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"^```ya?ml\n(.*?)^```", doc.read_text(), flags=re.M | re.S)):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and data and data.keys() <= Job.model_fields.keys():
                whole = {"name", "output"} <= data.keys()
                if not whole and "generate" in data:
                    base = {k: v for k, v in BASE_JOB.items() if k not in ("input", "steps")}
                else:
                    base = BASE_JOB
                found.append((f"{doc.relative_to(REPO)}#{i}", data if whole else base | data, whole))
    return found


DOC_JOBS = _doc_jobs()


@pytest.fixture(scope="module")
def schema_validator():
    shown = CliRunner().invoke(main, ["schema"])
    assert shown.exit_code == 0, shown.output
    schema = json.loads(shown.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_docs_show_jobs():
    assert sum(whole for *_, whole in DOC_JOBS) >= 2 and len(DOC_JOBS) >= 5


@pytest.mark.parametrize(
    "where, data, whole",
    [(p.name, yaml.safe_load(p.read_text()), True) for p in JOBS] + DOC_JOBS,
    ids=[p.name for p in JOBS] + [w for w, *_ in DOC_JOBS],
)
def test_schema_accepts_shipped_and_documented_jobs(schema_validator, where, data, whole):
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in schema_validator.iter_errors(data)]
    assert errors == []
    if whole:  # fragments may elide values (e.g. a sha256 written "…")
        parse_job(data, default_registry(), where)  # and darkroom itself accepts them


@pytest.mark.parametrize(
    "actors, valid",
    [(1, True), (3, True), ({"min": 1, "max": 4}, True), (0, False), ("2", False), ({"min": 1, "nax": 2}, False)],
)
def test_schema_actors_is_a_number_or_a_range(schema_validator, actors, valid):
    job = {"name": "j", "input": {"uri": "in/"}, "output": {"uri": "out/"}, "steps": [{"model": "identity"}]}
    assert schema_validator.is_valid(job | {"resources": {"actors": actors}}) is valid
    step = job["steps"][0] | {"resources": {"actors": actors}}
    assert schema_validator.is_valid(job | {"steps": [step]}) is valid
