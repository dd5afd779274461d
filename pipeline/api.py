"""The Python API behind the CLI: plan, run, and inspect runs. Tests and users call these."""

from __future__ import annotations

import time
from typing import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from models import Registry, default_registry
from pipeline import __version__, execute, generate, incremental, manifest, runs, storage
from pipeline.job import Job
from pipeline.lease import Lease
from pipeline.planning import PlanSummary, iter_shards


@dataclass
class RunSummary:
    run_id: str
    resumed: bool
    output_uri: str
    manifest_uri: str
    inputs: int
    shards: int
    shards_run: int
    counts: dict[str, int]  # status → rows over the whole run
    categories: dict[str, int] = field(default_factory=dict)  # new / changed / unchanged / failed at planning
    errors: list[dict] = field(default_factory=list)  # per error type: count, stage, an example input
    wall_seconds: float = 0.0

    @property
    def error_rows(self) -> int:
        return self.counts.get("error", 0)


def _check_credentials(job: Job) -> None:
    if job.input is not None:
        storage.check_credentials(job.input.uri, job.input.storage_options)
    storage.check_credentials(job.output.uri, job.output.storage_options)


def _selector(job: Job, fingerprint: str, summary: PlanSummary):
    """The incremental diff for ``job.mode`` as a filter over plan tables."""
    history = incremental.load_history(job.output.uri, fingerprint, job.output.storage_options)
    return lambda table: incremental.select(table, history, job.mode, summary.categories)


def plan(job: Job, registry: Registry | None = None) -> PlanSummary:
    """List, diff and shard the inputs without running or writing anything."""
    _check_credentials(job)
    summary = PlanSummary()
    select = _selector(job, job.fingerprint(registry or default_registry()), summary)
    for _ in iter_shards(job, summary, select):
        pass
    return summary


class ResumeError(ValueError):
    pass


def _unfinished_run(job: Job, fingerprint: str, run_id: str | None = None) -> runs.RunRecord | None:
    """The latest run of this same job on this output that planned fully but never committed
    (or exactly ``run_id``, which must be such a run)."""
    records = runs.load_all(job.output.uri, job.output.storage_options)
    if run_id is not None:
        found = [r for r in records if r.run_id == run_id]
        if not found:
            raise ResumeError(f"no run {run_id} under {job.output.uri} (see `darkroom runs {job.output.uri}`)")
        record = found[0]
        if record.status != "running":
            raise ResumeError(f"run {run_id} is {record.status}: only a planned, unfinished run can be resumed")
        if record.fingerprint != fingerprint:
            raise ResumeError(f"run {run_id} was planned with other steps, params or weights than this job")
        return record
    candidates = [r for r in records if r.status == "running" and r.fingerprint == fingerprint and r.input_uri == job.source_uri]
    return candidates[-1] if candidates else None


def _new_run(job: Job, fingerprint: str, run_id: str) -> runs.RunRecord:
    """Plan a new run: diff, shard and record the plan, then mark the record ``running``."""
    out = job.output
    record = runs.RunRecord(
        run_id=run_id,
        job_name=job.name,
        fingerprint=fingerprint,
        input_uri=job.source_uri,
        output_uri=out.uri,
        status="planning",
        started_at=runs.now(),
        job=job.model_dump(mode="json"),
        darkroom_version=__version__,
    )
    runs.save(record, out.storage_options)
    summary = PlanSummary()
    for shard in iter_shards(job, summary, _selector(job, fingerprint, summary)):
        runs.save_plan_shard(out.uri, record.run_id, shard.index, shard.table, out.storage_options)
    record.status, record.shards, record.inputs, record.bytes = "running", summary.shards, summary.inputs, summary.bytes
    record.listed, record.categories = summary.listed, summary.categories
    runs.save(record, out.storage_options)
    return record


def _error_summary(table: pa.Table) -> list[dict]:
    """Error types of a run, most frequent first: count, stage and one example input each."""
    errors = table.filter(pc.equal(table["status"], "error"))
    if not errors.num_rows:
        return []
    grouped = errors.group_by(["error_type", "stage"]).aggregate([("input_uri", "count"), ("input_uri", "min")])
    rows = [
        {"error_type": r["error_type"], "stage": r["stage"], "count": r["input_uri_count"], "example": r["input_uri_min"]}
        for r in grouped.to_pylist()
    ]
    return sorted(rows, key=lambda r: (-r["count"], r["error_type"] or ""))


def run(
    job: Job,
    registry: Registry | None = None,
    address: str | None = None,
    resume: bool = True,
    on_event: Callable[[dict], None] | None = None,
    resume_run_id: str | None = None,
) -> RunSummary:
    """Plan (or resume) and execute ``job`` on Ray; returns when every shard is committed.

    Holds the output's lease throughout, so a second run on the same output refuses to start.
    ``on_event`` receives progress events (plain dicts, see pipeline.progress).
    ``resume_run_id`` resumes that run (ResumeError if it cannot be); ``resume=False`` plans anew.
    """
    registry = registry or default_registry()
    _check_credentials(job)
    emit = on_event or (lambda event: None)
    started = time.perf_counter()
    out = job.output
    fingerprint = job.fingerprint(registry)
    run_id = runs.new_run_id()
    with Lease(out.uri, run_id, out.storage_options) as lease:
        record = _unfinished_run(job, fingerprint, resume_run_id) if resume or resume_run_id else None
        resumed = record is not None
        if record is None:
            emit({"event": "planning", "input": storage.redact(job.source_uri)})
            record = _new_run(job, fingerprint, run_id)
        else:
            lease.rename(record.run_id)
        committed = manifest.committed_shards(out.uri, record.run_id, out.storage_options)
        todo = [i for i in range(record.shards) if i not in committed]
        emit(
            {
                "event": "planned",
                "run_id": record.run_id,
                "resumed": resumed,
                "inputs": record.inputs,
                "shards": record.shards,
                "shards_to_run": len(todo),
                "categories": record.categories,
            }
        )

        if todo:
            execute.connect(address)
            engine = generate if job.generate is not None else execute
            ctx = engine.context_for(job, registry, record.run_id)
            engine.execute(ctx, registry, todo, lambda r: emit({"event": "shard", **r.as_event()}), check=lease.check)

        table = manifest.read(out.uri, out.storage_options, record.run_id, columns=["status", "error_type", "stage", "input_uri"])
        counts = {d["values"]: d["counts"] for d in pc.value_counts(table["status"]).to_pylist()}
        record.status, record.finished_at, record.counts = "committed", runs.now(), counts
        runs.save(record, out.storage_options)
    summary = RunSummary(
        run_id=record.run_id,
        resumed=resumed,
        output_uri=out.uri,
        manifest_uri=f"{out.uri.rstrip('/')}/manifest/",
        inputs=record.inputs,
        shards=record.shards,
        shards_run=len(todo),
        counts=counts,
        categories=record.categories,
        errors=_error_summary(table),
        wall_seconds=time.perf_counter() - started,
    )
    emit({"event": "finished", **asdict(summary)})
    return summary


def history(output_uri: str, storage_options: dict | None = None) -> list[dict]:
    """Run records of an output, oldest first, as plain dicts."""
    return [asdict(r) for r in runs.load_all(output_uri, storage_options)]
