"""Every ready-to-run job file in jobs/ is valid against the shipped registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import default_registry
from pipeline.job import load_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


def test_there_are_job_files():
    assert {"demo.yaml", "generate-digits.yaml", "nightly-restore.yaml"} <= {p.name for p in JOBS}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_is_valid(path):
    job = load_job(path, default_registry())
    assert job.name and job.output.uri
