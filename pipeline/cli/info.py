"""``darkroom models``, ``schema``, ``runs`` and ``report``: looking at the registry, the job schema and results."""

from __future__ import annotations

import json
import sys

import click

from models import default_registry
from models.registry import UnknownModelError
from pipeline import api
from pipeline.cli import EXIT_BAD_JOB
from pipeline.job import GENERATION_TASK, Job
from pipeline.manifest import Status
from pipeline.reference import field_rows
from pipeline.report import write_report


@click.command()
@click.argument("name", required=False)
def models(name: str | None) -> None:
    """Table of registered models: task, scale, weights source, licence, params.

    With NAME: that model's params (type, default, range, meaning), what a step's `params:` may hold.
    """
    registry = default_registry()
    if name is not None:
        try:
            entry = registry.get(name)
        except UnknownModelError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_JOB)
        _describe(entry)
        return
    rows = [("name", "task", "scale", "weights", "licence", "params", "description")]
    for e in registry.entries():
        rows.append(
            (e.name, e.task, _scale(e), _weights_source(e), e.licence.split(" (")[0], _param_names(e), e.description)
        )
    _table(rows)


def _table(rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell, the last one left ragged (descriptions are long)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])


PARAM_NAMES_WIDTH = 28  # the listing's params column: names up to this width, then "+N more"


def _param_names(entry) -> str:
    names = list(entry.params.model_fields)
    if not names:
        return "-"
    shown = names[:1]
    for n in names[1:]:
        rest = len(names) - len(shown) - 1
        if len(", ".join([*shown, n])) + (len(f", +{rest} more") if rest else 0) > PARAM_NAMES_WIDTH:
            break
        shown.append(n)
    more = len(names) - len(shown)
    return ", ".join(shown) + (f", +{more} more" if more else "")


def _describe(entry) -> None:
    """``darkroom models NAME``: the entry, then one row per param (docs/job-reference.md has the same)."""
    click.echo(f"{entry.name}: {entry.description}")
    click.echo(f"task:     {entry.task}{' (needs a mask: input.mask)' if entry.needs_mask else ''}")
    click.echo(f"scale:    {_scale(entry)}")
    click.echo(f"weights:  {_weights_source(entry)}")
    click.echo(f"licence:  {entry.licence}")
    where = "generate.params" if entry.task == GENERATION_TASK else "a step's params"
    rows = field_rows(entry.params)
    if not rows:
        click.echo(f"params:   none ({where} must be empty or absent)")
        return
    click.echo(f"params ({where}):")
    _table([("  param", "type", "default", "range", "meaning"), *((f"  {r[0]}", *r[1:]) for r in rows)])


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


@click.command()
def schema() -> None:
    """JSON schema of job files (for editor autocomplete, e.g. yaml-language-server)."""
    click.echo(json.dumps(Job.model_json_schema(), indent=2))


@click.command(name="runs")
@click.argument("output_uri")
@click.option("--json", "as_json", is_flag=True, help="Print run records as JSON lines.")
def runs(output_uri: str, as_json: bool) -> None:
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
            f"{c.get(Status.OK, 0):>7} {c.get(Status.ERROR, 0):>7}  {r['started_at']}"
        )


@click.command()
@click.argument("output_uri")
@click.option("--run", "run_id", help="Only this run (default: the latest row of each input over all runs).")
@click.option("--out", "dest", help="Where to write the HTML (default: OUTPUT_URI/report.html).")
@click.option("--max-items", default=200, show_default=True, help="Items shown with thumbnails; the rest are counted.")
def report(output_uri: str, run_id: str | None, dest: str | None, max_items: int) -> None:
    """Write one self-contained HTML page: before/after pairs, errors, run statistics."""
    try:
        where = write_report(output_uri, run_id=run_id, dest=dest, max_items=max_items)
    except LookupError as exc:
        click.echo(f"error: {exc.args[0]}", err=True)
        sys.exit(1)
    click.echo(where)
