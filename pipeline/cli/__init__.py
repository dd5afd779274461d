"""The ``darkroom`` command: the click group, its exit codes and one-line errors.

Each command family lives in its own module (``run``: run/plan/validate, ``cluster``: submit and
the commands over submitted jobs, ``info``: models/schema/runs/report); the group imports a
command's module only when that command is looked up, and no command module imports torch or Ray
at import time, so light commands (``--help``, ``validate``, ``models`` …) start fast.

Exit codes: 0 all ok, 3 finished with error rows, 2 bad job file or usage, a job field naming
a place that does not exist or cannot be written, weights that cannot load (checked before Ray
starts; pipeline.errors.exit_code), or a run that cannot be resumed as asked; 1 the run itself failed
(e.g. a model actor could not start); 143 stopped by SIGTERM (``darkroom stop``), the run recorded
``stopped``.
"""

from __future__ import annotations

import importlib
import sys

import click

from models import default_registry
from pipeline.errors import exit_code, explain
from pipeline.job import Job, JobError, load_job

EXIT_ERROR_ROWS = 3
EXIT_BAD_JOB = 2
EXIT_RUN_FAILED = 1
EXIT_STOPPED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended

# command name → "module:attribute" of its click command, imported on first lookup
COMMANDS = {
    "run": "pipeline.cli.run:run",
    "plan": "pipeline.cli.run:plan",
    "validate": "pipeline.cli.run:validate",
    "submit": "pipeline.cli.cluster:submit",
    "status": "pipeline.cli.cluster:status",
    "logs": "pipeline.cli.cluster:logs",
    "stop": "pipeline.cli.cluster:stop",
    "jobs": "pipeline.cli.cluster:jobs",
    "models": "pipeline.cli.info:models",
    "schema": "pipeline.cli.info:schema",
    "runs": "pipeline.cli.info:runs",
    "report": "pipeline.cli.info:report",
}


def load_job_file(
    path: str, input_uri: str | None = None, output_uri: str | None = None, mode: str | None = None
) -> Job:
    """The job at ``path`` with the command line's overrides; a bad job prints its problems and exits 2."""
    overrides = {k: v for k, v in {"input.uri": input_uri, "output.uri": output_uri, "mode": mode}.items() if v}
    try:
        job = load_job(path, default_registry(), overrides)
    except JobError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_BAD_JOB)
    # Named in one-line errors (see _Group.invoke) when a storage error does not say which URI.
    uris = {"input.uri": job.input.uri} if job.input is not None else {}
    click.get_current_context().find_root().ensure_object(dict)["uris"] = uris | {"output.uri": job.output.uri}
    return job


class _Group(click.Group):
    """Loads commands from :data:`COMMANDS` on lookup, and turns unexpected failures into one
    plain line (``--debug``: the full traceback)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, _, attr = COMMANDS[cmd_name].partition(":")
        return getattr(importlib.import_module(module), attr)

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


@click.group(cls=_Group)
@click.version_option(package_name="darkroom")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """darkroom: restore and generate image archives on Ray, with Parquet manifests."""
