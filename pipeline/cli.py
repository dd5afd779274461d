"""The ``darkroom`` command: a thin click layer over pipeline.api.

Exit codes: 0 all ok, 3 finished with error rows, 2 bad job file or usage, 1 the run
itself failed (e.g. a model could not load).
"""

from __future__ import annotations

import json
import sys

import click

from models import default_registry
from pipeline import api
from pipeline.job import Job, JobError, load_job

EXIT_ERROR_ROWS = 3
EXIT_BAD_JOB = 2


def _load(path: str, input_uri: str | None, output_uri: str | None) -> Job:
    overrides = {k: v for k, v in {"input.uri": input_uri, "output.uri": output_uri}.items() if v}
    try:
        return load_job(path, default_registry(), overrides)
    except JobError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_BAD_JOB)


@click.group()
@click.version_option(package_name="darkroom")
def main() -> None:
    """darkroom: restore and generate image archives on Ray, with Parquet manifests."""


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_uri", help="Override input.uri.")
@click.option("--output", "output_uri", help="Override output.uri.")
@click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start Ray locally).")
@click.option("--no-resume", is_flag=True, help="Start a new run even if an unfinished one exists.")
def run(job_file: str, input_uri: str | None, output_uri: str | None, address: str | None, no_resume: bool) -> None:
    """Run JOB_FILE to completion (resuming an unfinished run of the same job)."""
    job = _load(job_file, input_uri, output_uri)
    summary = api.run(job, address=address, resume=not no_resume)
    verb = "resumed" if summary.resumed else "run"
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "no inputs"
    click.echo(f"{verb} {summary.run_id}: {summary.inputs} inputs in {summary.shards} shards: {counts} ({summary.wall_seconds:.1f} s)")
    for error_type, uri in sorted(summary.error_examples.items()):
        click.echo(f"  error {error_type}: e.g. {uri}")
    click.echo(f"images:   {summary.output_uri.rstrip('/')}/images/")
    click.echo(f"manifest: {summary.manifest_uri}")
    sys.exit(EXIT_ERROR_ROWS if summary.errors else 0)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_uri", help="Override input.uri.")
@click.option("--output", "output_uri", help="Override output.uri.")
def plan(job_file: str, input_uri: str | None, output_uri: str | None) -> None:
    """List and shard the inputs of JOB_FILE without running anything."""
    job = _load(job_file, input_uri, output_uri)
    summary = api.plan(job)
    click.echo(f"inputs:  {summary.inputs}")
    click.echo(f"shards:  {summary.shards} (shard_size {job.resources.shard_size})")
    click.echo(f"bytes:   {summary.bytes}")
    if summary.skipped_not_image:
        click.echo(f"skipped: {summary.skipped_not_image} files without an image extension (e.g. {summary.examples_skipped[0]})")


@main.command()
@click.argument("job_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(job_files: tuple[str, ...]) -> None:
    """Check job files; print one line per problem."""
    bad = False
    registry = default_registry()
    for path in job_files:
        try:
            load_job(path, registry)
            click.echo(f"{path}: ok")
        except JobError as exc:
            bad = True
            for problem in exc.problems:
                click.echo(problem, err=True)
    sys.exit(EXIT_BAD_JOB if bad else 0)


@main.command()
def models() -> None:
    """Table of registered models."""
    rows = [("name", "task", "weights", "licence", "description")]
    for e in default_registry().entries():
        rows.append((e.name, e.task, e.weights.uri.rsplit("/", 1)[-1] if e.weights else "-", e.licence.split(" (")[0], e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])


@main.command(name="runs")
@click.argument("output_uri")
@click.option("--json", "as_json", is_flag=True, help="Print run records as JSON lines.")
def runs_cmd(output_uri: str, as_json: bool) -> None:
    """History of runs written to OUTPUT_URI."""
    records = api.history(output_uri)
    if as_json:
        for r in records:
            click.echo(json.dumps(r))
        return
    if not records:
        click.echo(f"no runs under {output_uri}")
        return
    click.echo(f"{'run_id':<24} {'job':<16} {'status':<10} {'inputs':>7} {'ok':>7} {'error':>7}  started")
    for r in records:
        c = r["counts"]
        click.echo(
            f"{r['run_id']:<24} {r['job_name']:<16} {r['status']:<10} {r['inputs']:>7} "
            f"{c.get('ok', 0):>7} {c.get('error', 0):>7}  {r['started_at']}"
        )
