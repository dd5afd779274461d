"""The ``darkroom`` command: a thin click layer over pipeline.api.

Exit codes: 0 all ok, 3 finished with error rows, 2 bad job file or usage, or a job field naming
a place that does not exist or cannot be written (pipeline.errors.exit_code), 1 the run itself
failed (e.g. a model could not load).
"""

from __future__ import annotations

import json
import sys

import click

from models import default_registry
from pipeline import api, progress
from pipeline.errors import exit_code, explain
from pipeline.job import GENERATION_TASK, Job, JobError, load_job
from pipeline.lease import LeaseHeld

EXIT_ERROR_ROWS = 3
EXIT_BAD_JOB = 2
EXIT_RUN_FAILED = 1
MODES = ["incremental", "retry-errors", "overwrite"]


def _categories(categories: dict[str, int]) -> str:
    return ", ".join(f"{categories.get(c, 0)} {c}" for c in ("new", "changed", "unchanged", "failed"))


def _load(path: str, input_uri: str | None, output_uri: str | None, mode: str | None = None) -> Job:
    overrides = {k: v for k, v in {"input.uri": input_uri, "output.uri": output_uri, "mode": mode}.items() if v}
    try:
        job = load_job(path, default_registry(), overrides)
    except JobError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_BAD_JOB)
    # Named in one-line errors (see _FriendlyGroup) when a storage error does not say which URI.
    uris = {"input.uri": job.input.uri} if job.input is not None else {}
    click.get_current_context().find_root().ensure_object(dict)["uris"] = uris | {"output.uri": job.output.uri}
    return job


class _FriendlyGroup(click.Group):
    """Turns unexpected failures into one plain line (``--debug``: the full traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {explain(exc, (ctx.obj or {}).get('uris'))}", err=True)
            sys.exit(exit_code(exc))


@click.group(cls=_FriendlyGroup)
@click.version_option(package_name="darkroom")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """darkroom: restore and generate image archives on Ray, with Parquet manifests."""


@main.command()
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
    """Run JOB_FILE to completion (resuming an unfinished run of the same job)."""
    job = _load(job_file, input_uri, output_uri, mode)
    show = progress.reporter(log_format)
    try:
        summary = api.run(job, address=address, resume=not no_resume, on_event=show, resume_run_id=resume_run_id)
    except (LeaseHeld, api.ResumeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_RUN_FAILED)
    if not isinstance(show, progress.JsonReporter):  # JSON mode already printed the summary as an event
        _print_summary(summary, job)
    sys.exit(EXIT_ERROR_ROWS if summary.error_rows else 0)


def _print_summary(summary: api.RunSummary, job: Job) -> None:
    verb = "resumed" if summary.resumed else "run"
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "nothing to do"
    done = sum(summary.counts.values())
    click.echo(
        f"{verb} {summary.run_id} ({job.mode}): {_categories(summary.categories)}; "
        f"{summary.inputs} inputs in {summary.shards} shards: {counts} "
        f"({summary.wall_seconds:.1f} s, {progress.speed(done / max(summary.wall_seconds, 1e-9))})"
    )
    for e in summary.errors[:5]:
        click.echo(f"  {e['count']:>6} × {e['error_type']} (at {e['stage']}), e.g. {e['example']}")
    if len(summary.errors) > 5:
        click.echo(f"  … and {len(summary.errors) - 5} more error types (see the manifest)")
    out = summary.output_uri.rstrip("/")
    click.echo(f"images:   {out}/images/")
    click.echo(f"manifest: {summary.manifest_uri}")
    click.echo(f"next:     darkroom report {out}   (or: darkroom runs {out})")


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_uri", help="Override input.uri.")
@click.option("--output", "output_uri", help="Override output.uri.")
@click.option("--mode", type=click.Choice(MODES), help="Override mode.")
def plan(job_file: str, input_uri: str | None, output_uri: str | None, mode: str | None) -> None:
    """List, diff and shard the inputs of JOB_FILE without running anything."""
    job = _load(job_file, input_uri, output_uri, mode)
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
        click.echo(
            f"skipped: {summary.skipped_not_image} files without an image extension (e.g. "
            f"{summary.examples_skipped[0]})"
        )
    if summary.skipped_masks:
        click.echo(f"masks:   {summary.skipped_masks} files matching input.mask (masks, not inputs)")


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
    """Table of registered models: task, scale, weights source, licence."""
    rows = [("name", "task", "scale", "weights", "licence", "description")]
    for e in default_registry().entries():
        rows.append((e.name, e.task, _scale(e), _weights_source(e), e.licence.split(" (")[0], e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])


def _scale(entry) -> str:
    if entry.task == GENERATION_TASK:
        return "-"  # makes images from noise: no input to scale
    if entry.weights:
        return f"×{entry.weights.scale}"
    fields = entry.params.model_fields
    if "scale" in fields:
        return f"×scale (default {fields['scale'].default:g})"
    return "from file" if "uri" in fields else "×1"


def _weights_source(entry) -> str:
    if not entry.weights:
        return "params.uri (any fsspec URI)" if "uri" in entry.params.model_fields else "-"
    uri = entry.weights.uri
    if uri.startswith("package://"):
        return uri.removeprefix("package://").split("/", 1)[0] + " (package)"
    return uri


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


# ---- cluster submission: thin commands over pipeline/submit.py (Ray's Job Submission API) ----

import contextlib  # noqa: E402
import time  # noqa: E402

from pipeline import submit as cluster  # noqa: E402  (stdlib only at import; Ray is imported on use)

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


@main.command(context_settings={"ignore_unknown_options": True})
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
    job = _load(job_file, None, None)  # a bad job file exits 2 here, before anything is uploaded
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


@main.command()
@click.argument("submission_id")
@click.option("--address", help=_ADDRESS_HELP)
def status(submission_id: str, address: str | None) -> None:
    """Status of a submitted job: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    with _cluster_errors():
        state = cluster.status(submission_id, address)
    code = f" (exit {state.exit_code})" if state.exit_code is not None else ""
    click.echo(f"{state.submission_id}: {state.status}{code} {state.message}".rstrip())


@main.command()
@click.argument("submission_id")
@click.option("--address", help=_ADDRESS_HELP)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs(submission_id: str, address: str | None, follow: bool) -> None:
    """Output of a submitted job (its `darkroom run` stdout and stderr)."""
    with _cluster_errors():
        for chunk in cluster.logs(submission_id, address, follow=follow):
            click.echo(chunk, nl=False)


@main.command()
@click.argument("submission_id")
@click.option("--address", help=_ADDRESS_HELP)
def stop(submission_id: str, address: str | None) -> None:
    """Stop a submitted job (committed shards stay committed; a later run resumes the rest)."""
    with _cluster_errors():
        if cluster.stop(submission_id, address):
            click.echo(f"stopping {submission_id}")
        else:
            click.echo(f"{submission_id} is not running ({cluster.status(submission_id, address).status})")


@main.command()
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


# ---- looking at results: thin commands over pipeline/report.py and the job schema ----


@main.command()
@click.argument("output_uri")
@click.option("--run", "run_id", help="Only this run (default: the latest row of each input over all runs).")
@click.option("--out", "dest", help="Where to write the HTML (default: OUTPUT_URI/report.html).")
@click.option("--max-items", default=200, show_default=True, help="Items shown with thumbnails; the rest are counted.")
def report(output_uri: str, run_id: str | None, dest: str | None, max_items: int) -> None:
    """Write one self-contained HTML page: before/after pairs, errors, run statistics."""
    from pipeline.report import write_report

    try:
        where = write_report(output_uri, run_id=run_id, dest=dest, max_items=max_items)
    except LookupError as exc:
        click.echo(f"error: {exc.args[0]}", err=True)
        sys.exit(1)
    click.echo(where)


@main.command()
def schema() -> None:
    """JSON schema of job files (for editor autocomplete, e.g. yaml-language-server)."""
    click.echo(json.dumps(Job.model_json_schema(), indent=2))


if __name__ == "__main__":
    main()
