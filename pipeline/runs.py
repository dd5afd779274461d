"""Run records: one JSON file per run under ``<output>/_darkroom/runs/<run_id>/`` (pipeline.layout).

A record is written when planning starts (``planning``), rewritten when the listing is done
and every plan shard written (``running``) and once more when every shard is committed
(``committed``), or when the run ends early after planning: ``failed`` (an error stopped it) or
``stopped`` (SIGTERM, e.g. ``darkroom stop``, or Ctrl-C). Shards run while the record still says
``planning``: each as soon as its plan shard is written. The recorded plan beside it lets an
unfinished run resume with exactly the same shards, and lets a run interrupted while listing
continue its plan (pipeline.plan_writer); one that fails or stops while listing stays ``planning``.
"""

from __future__ import annotations

import io
import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import layout, storage


class RunStatus(StrEnum):
    """A run record's ``status``, in the order a run goes through them."""

    PLANNING = "planning"  # listing: the shards planned so far run; resumable (the plan is continued)
    RUNNING = "running"  # the plan is complete: the run can be resumed until committed
    COMMITTED = "committed"
    FAILED = "failed"  # ended by an error after planning: resumable
    STOPPED = "stopped"  # ended by SIGTERM / Ctrl-C after planning: resumable


# Never committed: resumed with the recorded plan (continued first, if the listing was cut short).
RESUMABLE = (RunStatus.PLANNING, RunStatus.RUNNING, RunStatus.FAILED, RunStatus.STOPPED)


@dataclass
class RunRecord:
    run_id: str
    job_name: str
    fingerprint: str
    input_uri: str  # input.uri; for a generation job generate://<model>/<seed>/<start>-<last index>
    output_uri: str
    status: str  # RunStatus: planning | running | committed | failed | stopped
    started_at: str
    job: dict
    finished_at: str | None = None
    shards: int = 0
    listed: int = 0  # image inputs found by the listing
    inputs: int = 0  # of those, planned to run (after the incremental diff)
    bytes: int = 0
    categories: dict[str, int] = field(default_factory=dict)  # new / changed / unchanged / failed
    counts: dict[str, int] = field(default_factory=dict)  # status → rows, set when committed
    # Each model actor of the invocation that committed the run: {id, busy_fraction, batches}
    actors: list[dict] = field(default_factory=list)
    darkroom_version: str = ""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent starts."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def save(record: RunRecord, storage_options: dict | None = None) -> None:
    uri = layout.run_record_uri(record.output_uri, record.run_id)
    storage.write_atomic(uri, json.dumps(asdict(record), indent=2).encode(), storage_options)


def load_all(output_uri: str, storage_options: dict | None = None) -> list[RunRecord]:
    """Every run record under ``output_uri``, oldest first."""
    records = []
    for entry in storage.list_dir(layout.runs_dir(output_uri), storage_options):
        if entry["type"] != "directory":
            continue
        run_id = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        try:
            data = storage.read_bytes(layout.run_record_uri(output_uri, run_id), storage_options)
        except FileNotFoundError:
            continue  # a run that crashed before its first record
        records.append(RunRecord(**json.loads(data)))
    return sorted(records, key=lambda r: r.run_id)


def plan_uri(output_uri: str, run_id: str, shard: int) -> str:
    return layout.plan_shard_uri(output_uri, run_id, shard)


def save_plan_shard(
    output_uri: str, run_id: str, shard: int, table: pa.Table, storage_options: dict | None = None
) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_atomic(plan_uri(output_uri, run_id, shard), buf.getvalue(), storage_options)


def planned_shards(output_uri: str, run_id: str, storage_options: dict | None = None) -> set[int]:
    """The shards of ``run_id`` whose plan shard is written (one listing of its plan folder)."""
    names = storage.list_names(layout.plan_dir(output_uri, run_id), storage_options)
    return {s for s in map(layout.shard_of_plan, names) if s is not None}


def load_plan_shard(output_uri: str, run_id: str, shard: int, storage_options: dict | None = None) -> pa.Table:
    data = storage.read_bytes(plan_uri(output_uri, run_id, shard), storage_options)
    return pq.read_table(io.BytesIO(data))
