"""The Python API behind the CLI: plan, run, and inspect runs. Tests and users call these."""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from models import Registry, default_registry
from pipeline import __version__, incremental, layout, manifest, preflight, runs, snapshot, storage
from pipeline.job import Job
from pipeline.lease import Lease
from pipeline.manifest import Status
from pipeline.plan_writer import PlanWriter
from pipeline.planning import PlanSummary, iter_shards
from pipeline.runs import RunStatus

log = logging.getLogger(__name__)


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
    # Per model actor of this invocation: {id, busy_fraction (of its life since its model loaded), batches}
    actors: list[dict] = field(default_factory=list)

    @property
    def error_rows(self) -> int:
        return self.counts.get(Status.ERROR, 0)


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
    registry = registry or default_registry()
    _check_credentials(job)
    preflight.check(job, writing=False)
    preflight.check_models(job, registry)
    summary = PlanSummary()
    select = _selector(job, job.fingerprint(registry), summary)
    for _ in iter_shards(job, summary, select):
        pass
    return summary


class ResumeError(ValueError):
    pass


class Stopped(BaseException):
    """Raised in the driver by SIGTERM (``darkroom stop``; see :func:`run`'s ``stop_on_sigterm``).
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""


_stop_requested = threading.Event()  # set by SIGTERM: a failure that follows it is the stop's doing


def _raise_stopped(signum, frame) -> None:
    _stop_requested.set()
    raise Stopped()


def _stop_on_sigterm() -> None:
    """SIGTERM raises Stopped in the main thread (installed again after ray.init, which sets its own)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stopped)


def _unfinished_run(job: Job, fingerprint: str, run_id: str | None = None) -> runs.RunRecord | None:
    """The latest run of this same job on this output that never committed, whether it died while
    planning or while running (or exactly ``run_id``, which must be such a run)."""
    records = runs.load_all(job.output.uri, job.output.storage_options)
    if run_id is not None:
        found = [r for r in records if r.run_id == run_id]
        if not found:
            raise ResumeError(f"no run {run_id} under {job.output.uri} (see `darkroom runs {job.output.uri}`)")
        record = found[0]
        if record.status not in runs.RESUMABLE:
            raise ResumeError(f"run {run_id} is {record.status}: only an unfinished run can be resumed")
        if record.fingerprint != fingerprint:
            raise ResumeError(
                f"run {run_id} was planned with other steps, params, weights or model configs than this job has "
                "now: resuming it would mix outputs of both (`darkroom run --no-resume` starts a new run)"
            )
        return record
    candidates = [
        r
        for r in records
        if r.status in runs.RESUMABLE and r.fingerprint == fingerprint and r.input_uri == job.source_uri
    ]
    return candidates[-1] if candidates else None


def inputs_in_shards(shards: set[int], record: runs.RunRecord) -> int:
    """How many of ``record``'s planned inputs lie in ``shards``: every shard holds ``shard_size`` consecutive
    inputs but the last (pipeline.planning), so this needs no read of the parts."""
    size = record.job["resources"]["shard_size"]
    return sum(min(size, record.inputs - shard * size) for shard in shards)


def _new_record(job: Job, fingerprint: str, run_id: str) -> runs.RunRecord:
    """A new run's record, saved as ``planning``."""
    record = runs.RunRecord(
        run_id=run_id,
        job_name=job.name,
        fingerprint=fingerprint,
        input_uri=job.source_uri,
        output_uri=job.output.uri,
        status=RunStatus.PLANNING,
        started_at=runs.now(),
        job=job.model_dump(mode="json"),
        darkroom_version=__version__,
    )
    runs.save(record, job.output.storage_options)
    return record


def _outcome(parts: Iterable[pa.Table]) -> tuple[dict[str, int], list[dict]]:
    """A run's row counts by status, and its error types, most frequent first (count, stage and
    the smallest input URI as an example), reduced one manifest part at a time, so the driver
    never holds a run's rows at once (a million-row run is a thousand parts)."""
    counts: Counter = Counter()
    errors: dict[tuple, dict] = {}
    for part in parts:
        counts.update({d["values"]: d["counts"] for d in pc.value_counts(part["status"]).to_pylist()})
        failed = part.filter(pc.equal(part["status"], Status.ERROR))
        if not failed.num_rows:
            continue
        grouped = failed.group_by(["error_type", "stage"]).aggregate([("input_uri", "count"), ("input_uri", "min")])
        for r in grouped.to_pylist():
            key = (r["error_type"], r["stage"])
            e = errors.setdefault(
                key, {"error_type": key[0], "stage": key[1], "count": 0, "example": r["input_uri_min"]}
            )
            e["count"] += r["input_uri_count"]
            e["example"] = min(e["example"], r["input_uri_min"])
    return dict(counts), sorted(errors.values(), key=lambda r: (-r["count"], r["error_type"] or ""))


def run(
    job: Job,
    registry: Registry | None = None,
    address: str | None = None,
    resume: bool = True,
    on_event: Callable[[dict], None] | None = None,
    resume_run_id: str | None = None,
    stop_on_sigterm: bool = False,
) -> RunSummary:
    """Plan (or resume) and execute ``job`` on Ray; returns when every shard is committed.

    Shards start running while the listing goes on (pipeline.plan_writer), and a run interrupted
    at any point, while listing included, is resumed exactly: every input gets one row.

    Holds the output's lease throughout, so a second run on the same output refuses to start;
    first removes the temporary files dead writers left under the output (storage.sweep_temp_files).
    ``on_event`` receives progress events (plain dicts, see pipeline.progress).
    ``resume_run_id`` resumes that run (ResumeError if it cannot be); ``resume=False`` plans anew.
    Weights are checked before the lease is taken (preflight.check_models). A run that ends in an
    error after planning is recorded ``failed``, one ended by Ctrl-C or (with ``stop_on_sigterm``,
    as ``darkroom run`` does) SIGTERM raising :class:`Stopped` is recorded ``stopped``: both resume
    like a ``running`` one.
    """
    registry = registry or default_registry()
    if stop_on_sigterm:
        _stop_requested.clear()
        _stop_on_sigterm()
    _check_credentials(job)
    preflight.check(job, writing=True)
    details = preflight.check_models(job, registry)
    sink, lock = on_event or (lambda event: None), threading.Lock()

    def emit(event: dict) -> None:  # from the driver loop and the planning thread, one event at a time
        with lock:
            sink(event)

    started = time.perf_counter()
    out = job.output
    fingerprint = job.fingerprint(registry)
    run_id = runs.new_run_id()
    with Lease(out.uri, run_id, out.storage_options) as lease:
        # Holding the lease, no other run writes here: temporary files of dead writers are debris.
        swept = storage.sweep_temp_files(out.uri, out.storage_options)
        if swept:
            log.info("removed %d temporary files left by dead writers under %s", swept, storage.redact(out.uri))
        record = _unfinished_run(job, fingerprint, resume_run_id) if resume or resume_run_id else None
        resumed = record is not None
        if record is None:
            record = _new_record(job, fingerprint, run_id)
        else:
            lease.rename(record.run_id)
        committed = manifest.committed_shards(out.uri, record.run_id, out.storage_options)
        actors: list[dict] = []
        writer: PlanWriter | None = None

        def planned() -> dict:  # once the plan is complete; committed: shards done before this process
            done = inputs_in_shards(committed, record) if writer is None else sum(writer.sizes[s] for s in committed)
            return {
                "event": "planned",
                "run_id": record.run_id,
                "resumed": resumed,
                "inputs": record.inputs,
                "inputs_done": done,
                "shards": record.shards,
                "shards_to_run": record.shards - len(committed),
                "categories": record.categories,
            }

        if record.status == RunStatus.PLANNING:
            # Shards run while the listing goes on: each as soon as its plan shard is written.
            emit({"event": "planning", "input": storage.redact(job.source_uri)})
            summary = PlanSummary()
            select = _selector(job, fingerprint, summary)
            writer = PlanWriter(job, record, summary, select, on_planned=lambda: emit(planned()))
            writer.start()
            shards: Iterable[int] = writer
        else:
            emit(planned())
            shards = range(record.shards)
        ran: list[int] = []

        def todo() -> Iterator[int]:
            for shard in shards:
                if shard not in committed:
                    ran.append(shard)
                    yield shard

        try:
            try:
                pending = todo()
                first = next(pending, None)  # so that a run with nothing to do never starts Ray
                if first is not None:
                    # Ray and torch: imported here, where shards run, so plan/history (and the CLI) start without them
                    from pipeline import cluster, execute, generate

                    cluster.connect(address)
                    if stop_on_sigterm:
                        _stop_on_sigterm()
                    engine = generate if job.generate is not None else execute
                    ctx = engine.context_for(job, registry, record.run_id, details)
                    shards_on = itertools.chain([first], pending)
                    actors = engine.execute(
                        ctx, registry, shards_on, lambda r: emit({"event": "shard", **r.as_event()}), lease.check
                    )
            finally:
                if writer is not None:
                    writer.stop()  # a failed run lists no further; stopped before its record is written
        except (Stopped, KeyboardInterrupt):
            _record_end(record, RunStatus.STOPPED, lease)
            raise
        except Exception as exc:
            if _stop_requested.is_set():  # `darkroom stop` also ends the job's actors: their death may surface first
                _record_end(record, RunStatus.STOPPED, lease)
                raise Stopped() from exc
            _record_end(record, RunStatus.FAILED, lease)
            raise

        parts = manifest.iter_tables(
            out.uri, out.storage_options, record.run_id, columns=["status", "error_type", "stage", "input_uri"]
        )
        counts, errors = _outcome(parts)
        record.status, record.finished_at, record.counts = RunStatus.COMMITTED, runs.now(), counts
        record.actors = actors or record.actors
        runs.save(record, out.storage_options)
        snapshot.update(out.uri, out.storage_options)  # the next plan reads it instead of every part
    summary = RunSummary(
        run_id=record.run_id,
        resumed=resumed,
        output_uri=out.uri,
        manifest_uri=layout.manifest_prefix(out.uri),
        inputs=record.inputs,
        shards=record.shards,
        shards_run=len(ran),
        counts=counts,
        categories=record.categories,
        errors=errors,
        wall_seconds=time.perf_counter() - started,
        actors=actors,
    )
    emit({"event": "finished", **asdict(summary)})
    return summary


def _record_end(record: runs.RunRecord, status: RunStatus, lease: Lease) -> None:
    """Record a planned run that ended early as ``status``, unless another run took the output
    over (that driver may be resuming this very run and owns its record now). A run that ended
    while still listing stays ``planning``: its plan is incomplete, and a rerun continues it."""
    if lease.lost or record.status == RunStatus.PLANNING:
        return
    record.status, record.finished_at = status, runs.now()
    try:
        runs.save(record, lease.storage_options)
    except Exception:  # the error being raised says more than a failure to record it
        pass


def history(output_uri: str, storage_options: dict | None = None) -> list[dict]:
    """Run records of an output, oldest first, as plain dicts."""
    return [asdict(r) for r in runs.load_all(output_uri, storage_options)]
