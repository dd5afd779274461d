"""``darkroom run``, ``plan`` and ``validate``: thin commands over pipeline.api and the job schema."""

from __future__ import annotations

import sys

import click

from models import default_registry
from pipeline import api, layout, preflight, progress
from pipeline.cli import EXIT_BAD_JOB, EXIT_ERROR_ROWS, EXIT_RUN_FAILED, EXIT_STOPPED, load_job_file
from pipeline.job import Job, JobError, load_job
from pipeline.lease import LeaseHeld

MODES = ["incremental", "retry-errors", "overwrite"]


def _categories(categories: dict[str, int]) -> str:
    return ", ".join(f"{categories.get(c, 0)} {c}" for c in ("new", "changed", "unchanged", "failed"))


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_uri", help="Override input.uri.")
@click.option("--output", "output_uri", help="Override output.uri.")
@click.option("--mode", type=click.Choice(MODES), help="Override mode (default: the job's, else incremental).")
@click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start Ray locally).")
@click.option("--no-resume", is_flag=True, help="Start a new run even if an unfinished one exists.")
@click.option(
    "--resume", "resume_run_id", metavar="RUN_ID", help="Resume this unfinished run (default: the latest of this job)."
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "rich", "plain", "json"]),
    default="auto",
    show_default=True,
    help="Progress display: live bar (rich), lines (plain) or JSON lines; auto = rich on a terminal, else json.",
)
def run(
    job_file: str,
    input_uri: str | None,
    output_uri: str | None,
    mode: str | None,
    address: str | None,
    no_resume: bool,
    resume_run_id: str | None,
    log_format: str,
) -> None:
    """Run JOB_FILE to completion (resuming an unfinished run of the same job).

    SIGTERM (``darkroom stop``) stops it: no more shards are started, the run is recorded
    ``stopped`` (a later ``darkroom run`` resumes it) and the command exits 143 with one line."""
    job = load_job_file(job_file, input_uri, output_uri, mode)
    show = progress.reporter(log_format)
    run_id = None

    def on_event(event: dict) -> None:
        nonlocal run_id
        run_id = event.get("run_id", run_id)
        show(event)

    try:
        summary = api.run(
            job,
            address=address,
            resume=not no_resume,
            on_event=on_event,
            resume_run_id=resume_run_id,
            stop_on_sigterm=True,
        )
    except api.Stopped:
        where = f"run {run_id} recorded as stopped" if run_id else "stopped before the run was planned"
        click.echo(f"stopped: {where}; `darkroom run` resumes it", err=True)
        sys.exit(EXIT_STOPPED)
    except LeaseHeld as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_RUN_FAILED)
    except api.ResumeError as exc:  # retrying the same command cannot help
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_JOB)
    if not isinstance(show, progress.JsonReporter):  # JSON mode already printed the summary as an event
        _print_summary(summary, job)
    sys.exit(EXIT_ERROR_ROWS if summary.error_rows else 0)


def _busy(actor: dict) -> str:
    """``bicubic#0 83% busy (41 batches)``; an actor that did not answer at the end: ``bicubic#1 ?``."""
    if actor["busy_fraction"] is None:
        return f"{actor['id']} ?"
    return f"{actor['id']} {actor['busy_fraction']:.0%} busy ({actor['batches']} batches)"


def _print_summary(summary: api.RunSummary, job: Job) -> None:
    verb = "resumed" if summary.resumed else "run"
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "nothing to do"
    done = sum(summary.counts.values())
    click.echo(
        f"{verb} {summary.run_id} ({job.mode}): {_categories(summary.categories)}; "
        f"{summary.inputs} inputs in {summary.shards} shards: {counts} "
        f"({summary.wall_seconds:.1f} s, {progress.speed(done / max(summary.wall_seconds, 1e-9))})"
    )
    if summary.actors:
        click.echo("actors:   " + ", ".join(_busy(a) for a in summary.actors))
    for e in summary.errors[:5]:
        click.echo(f"  {e['count']:>6} × {e['error_type']} (at {e['stage']}), e.g. {e['example']}")
    if len(summary.errors) > 5:
        click.echo(f"  … and {len(summary.errors) - 5} more error types (see the manifest)")
    out = summary.output_uri.rstrip("/")
    click.echo(f"images:   {layout.images_prefix(out)}")
    click.echo(f"manifest: {summary.manifest_uri}")
    click.echo(f"next:     darkroom report {out}   (or: darkroom runs {out})")


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_uri", help="Override input.uri.")
@click.option("--output", "output_uri", help="Override output.uri.")
@click.option("--mode", type=click.Choice(MODES), help="Override mode.")
def plan(job_file: str, input_uri: str | None, output_uri: str | None, mode: str | None) -> None:
    """List, diff and shard the inputs of JOB_FILE without running anything."""
    job = load_job_file(job_file, input_uri, output_uri, mode)
    summary = api.plan(job)
    if job.generate is not None:
        click.echo(f"samples: {summary.listed} ({job.source_uri}; {_categories(summary.categories)})")
        click.echo(f"to run:  {summary.inputs} in mode {job.mode}")
        click.echo(f"shards:  {summary.shards} (shard_size {job.resources.shard_size})")
        return
    click.echo(f"listed:  {summary.listed} images ({_categories(summary.categories)})")
    click.echo(f"inputs:  {summary.inputs} to run in mode {job.mode}")
    click.echo(f"shards:  {summary.shards} (shard_size {job.resources.shard_size})")
    click.echo(f"bytes:   {summary.bytes}")
    if summary.skipped_not_image:
        example = summary.examples_skipped[0]
        click.echo(f"skipped: {summary.skipped_not_image} files without an image extension (e.g. {example})")
    if summary.skipped_masks:
        click.echo(f"masks:   {summary.skipped_masks} files matching input.mask (masks, not inputs)")


@click.command()
@click.argument("job_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(job_files: tuple[str, ...]) -> None:
    """Check job files, and that their weights load; print one line per problem."""
    bad = False
    registry = default_registry()
    for path in job_files:
        try:
            preflight.check_models(load_job(path, registry), registry)
            click.echo(f"{path}: ok")
        except JobError as exc:
            bad = True
            for problem in exc.problems:
                click.echo(problem, err=True)
        except preflight.ConfigurationError as exc:
            bad = True
            click.echo(f"{path}: {exc}", err=True)
    sys.exit(EXIT_BAD_JOB if bad else 0)
