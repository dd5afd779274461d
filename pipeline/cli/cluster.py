"""``darkroom submit``, ``status``, ``logs``, ``stop`` and ``jobs``: thin commands over pipeline/submit.py
(Ray's Job Submission API; pipeline.submit imports Ray only when it contacts a cluster)."""

from __future__ import annotations

import contextlib
import sys
import time

import click

from pipeline import submit as cluster
from pipeline.cli import EXIT_BAD_JOB, EXIT_ERROR_ROWS, load_job_file

_ADDRESS_HELP = "Ray dashboard address, http://HEAD:8265 (default: $RAY_ADDRESS)."


@contextlib.contextmanager
def _cluster_errors():
    """pipeline.submit failures (unreachable cluster, unknown id, …): one line on stderr, exit 1."""
    try:
        yield
    except cluster.SubmitError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "-"


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--address", help=_ADDRESS_HELP)
@click.option("--wait", is_flag=True, help="Follow the logs until the job ends, then exit with its exit code.")
@click.option(
    "--python",
    metavar="PATH",
    help="Python on the head that runs the job (default: $DARKROOM_PYTHON, else `python` on the head's PATH).",
)
def submit(job_file: str, run_args: tuple[str, ...], address: str | None, wait: bool, python: str | None) -> None:
    """Submit `darkroom run JOB_FILE [RUN_ARGS...]` to a Ray cluster; prints the submission id.

    The project directory and JOB_FILE travel with the submission. RUN_ARGS (after --) go to
    `darkroom run`, e.g. `darkroom submit job.yaml -- --output s3://b/o/`.
    """
    job = load_job_file(job_file)  # a bad job file exits 2 here, before anything is uploaded
    with _cluster_errors():
        submission_id = cluster.submit(job_file, address, list(run_args), job_name=job.name, python=python)
        click.echo(submission_id)
        if not wait:
            click.echo(f"follow with: darkroom logs {submission_id} --follow", err=True)
            return
        for chunk in cluster.logs(submission_id, address, follow=True):
            click.echo(chunk, nl=False)
        state = cluster.wait(submission_id, address)
    click.echo(f"{submission_id}: {state.status} {state.message}".rstrip(), err=True)
    if state.status == "SUCCEEDED":
        sys.exit(0)
    sys.exit(state.exit_code if state.exit_code in (EXIT_BAD_JOB, EXIT_ERROR_ROWS) else 1)


@click.command()
@click.argument("submission_id")
@click.option("--address", help=_ADDRESS_HELP)
def status(submission_id: str, address: str | None) -> None:
    """Status of a submitted job: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    with _cluster_errors():
        state = cluster.status(submission_id, address)
    code = f" (exit {state.exit_code})" if state.exit_code is not None else ""
    click.echo(f"{state.submission_id}: {state.status}{code} {state.message}".rstrip())


@click.command()
@click.argument("submission_id")
@click.option("--address", help=_ADDRESS_HELP)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs(submission_id: str, address: str | None, follow: bool) -> None:
    """Output of a submitted job (its `darkroom run` stdout and stderr)."""
    with _cluster_errors():
        for chunk in cluster.logs(submission_id, address, follow=follow):
            click.echo(chunk, nl=False)


@click.command()
@click.argument("submission_id")
@click.option("--address", help=_ADDRESS_HELP)
def stop(submission_id: str, address: str | None) -> None:
    """Stop a submitted job (committed shards stay committed; a later run resumes the rest)."""
    with _cluster_errors():
        if cluster.stop(submission_id, address):
            click.echo(f"stopping {submission_id}")
        else:
            click.echo(f"{submission_id} is not running ({cluster.status(submission_id, address).status})")


@click.command()
@click.option("--address", help=_ADDRESS_HELP)
def jobs(address: str | None) -> None:
    """Jobs submitted to the cluster, oldest first."""
    with _cluster_errors():
        states = cluster.list_jobs(address)
    if not states:
        click.echo("no submitted jobs")
        return
    click.echo(f"{'submission_id':<44} {'job':<16} {'status':<10} {'exit':>4}  started")
    for s in states:
        code = "-" if s.exit_code is None else str(s.exit_code)
        click.echo(f"{s.submission_id:<44} {(s.job_name or '-'):<16} {s.status:<10} {code:>4}  {_when(s.start_time)}")
