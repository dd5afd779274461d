"""The history snapshot: the committed manifest compacted to what the incremental diff needs, so
planning does not read every part of every past run.

``<output>/_darkroom/snapshot/history.parquet`` holds the distinct (input_uri, input_etag,
input_size, input_mtime, fingerprint, status) tuples (``COLUMNS``, MANIFEST_SCHEMA's types) of
the parts it covers, and names those parts in its Parquet key-value metadata (``darkroom.covers``,
JSON: ``{"parts": {run_id: [[first_shard, last_shard + 1], ...]}, "complete": [run_id, ...]}``).
``complete`` runs were committed when the snapshot was written: a committed run gets no new parts,
so their folders are not even listed again. Distinct tuples rather than the latest row per input:
the diff asks "is there any ok row of this version and fingerprint" (pipeline.incremental), and an
older row can answer that where the latest does not (an input that came back to an older version,
an ok row followed by a failed retry of the same version), so dropping it would change categories.

``update`` rewrites the snapshot once a run is committed (under the output's lease, so one writer
at a time), atomically (pipeline.storage.write_atomic). ``load`` returns the snapshot plus the
parts it does not cover (e.g. those of a run killed before it committed), read in parallel. A
missing or unreadable snapshot, or one naming a run whose folder is gone, is ignored: every part
is read instead, and the next commit writes a whole new one. The manifest parts stay the record;
the snapshot is derived from them and never read by anything but planning.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import layout, manifest, runs, storage
from pipeline.runs import RunStatus

log = logging.getLogger(__name__)

COLUMNS = ["input_uri", "input_etag", "input_size", "input_mtime", "fingerprint", "status"]
SCHEMA = pa.schema([manifest.MANIFEST_SCHEMA.field(c) for c in COLUMNS])
METADATA_KEY = b"darkroom.covers"
READ_THREADS = 16  # parts in flight at once: one S3 GET costs 10–50 ms of waiting, little CPU
IN_FLIGHT_ROWS = 1 << 20  # fewer parts in flight when they are this big (shard_size rows each)
BATCH_ROWS = 1 << 16


def snapshot_uri(output_uri: str) -> str:
    return layout.snapshot_uri(output_uri)


@dataclass
class Snapshot:
    """``table``: SCHEMA, distinct rows; ``parts``: run_id → covered shard numbers; ``complete``:
    run ids whose every part is covered and that can get no more."""

    table: pa.Table
    parts: dict[str, set[int]] = field(default_factory=dict)
    complete: set[str] = field(default_factory=set)


@dataclass
class Loaded:
    """What planning reads: the snapshot used (or None) and ``parts_read``, the URIs of the
    committed parts it does not cover. ``tables()`` reads them."""

    snapshot: Snapshot | None
    parts_read: list[str]
    storage_options: dict | None = None

    def tables(self) -> Iterator[pa.Table]:
        """SCHEMA tables holding every committed row's COLUMNS (rows repeating another's may be
        left out): the snapshot's, then the parts', gathered into tables of about BATCH_ROWS rows
        (reducing 15,625 tables of 64 rows one by one costs more than their rows)."""
        if self.snapshot is not None:
            yield self.snapshot.table
        batch: list[pa.Table] = []
        for table in iter_parts(self.parts_read, self.storage_options):
            batch.append(table)
            if sum(t.num_rows for t in batch) >= BATCH_ROWS:
                yield pa.concat_tables(batch)
                batch = []
        if batch:
            yield pa.concat_tables(batch)


def _ranges(shards: Iterable[int]) -> list[list[int]]:
    """Sorted shard numbers as [first, end) ranges: 15,625 parts of a full run are one range."""
    out: list[list[int]] = []
    for s in sorted(shards):
        if out and out[-1][1] == s:
            out[-1][1] = s + 1
        else:
            out.append([s, s + 1])
    return out


def read(output_uri: str, storage_options: dict | None = None) -> Snapshot | None:
    """The snapshot, or None if there is none or it cannot be read (logged)."""
    uri = snapshot_uri(output_uri)
    try:
        data = storage.read_bytes(uri, storage_options)
    except FileNotFoundError:
        return None
    try:
        table = pq.read_table(pa.BufferReader(data))
        covers = json.loads(table.schema.metadata[METADATA_KEY])
        parts = {run_id: {s for a, b in spans for s in range(a, b)} for run_id, spans in covers["parts"].items()}
        return Snapshot(table.select(COLUMNS).cast(SCHEMA), parts, set(covers["complete"]))
    except Exception as exc:  # a torn or foreign file: the parts are still the record
        log.warning("ignoring the history snapshot %s (%s): reading every manifest part", storage.redact(uri), exc)
        return None


def iter_parts(uris: list[str], storage_options: dict | None = None) -> Iterator[pa.Table]:
    """COLUMNS of the given manifest parts, in the given order, up to READ_THREADS read at once,
    fewer while parts are big: at most about IN_FLIGHT_ROWS rows read ahead of the consumer."""

    def one(uri: str) -> pa.Table:
        data = storage.read_bytes(uri, storage_options)
        return pq.read_table(pa.BufferReader(data), columns=COLUMNS, schema=manifest.MANIFEST_SCHEMA).select(COLUMNS)

    todo = iter(uris)
    largest = 1  # rows of the largest part read so far
    with ThreadPoolExecutor(READ_THREADS) as pool:
        pending: deque = deque()

        def fill() -> None:
            while len(pending) < max(1, min(READ_THREADS, IN_FLIGHT_ROWS // largest)):
                uri = next(todo, None)
                if uri is None:
                    return
                pending.append(pool.submit(one, uri))

        fill()
        while pending:
            table = pending.popleft().result()
            largest = max(largest, table.num_rows)
            fill()
            yield table


def _uncovered(
    output_uri: str, snapshot: Snapshot | None, storage_options: dict | None
) -> tuple[dict[str, list[int]], bool]:
    """(run_id → shards of the parts the snapshot does not cover, whether the snapshot still holds):
    it does not once a run folder it counts as complete is gone (someone removed a run's rows)."""
    run_ids = manifest.run_ids(output_uri, storage_options)
    if snapshot is not None and not snapshot.complete <= set(run_ids):
        log.warning("the history snapshot names runs no longer under manifest/: reading every manifest part")
        snapshot = None
    skip = snapshot.complete if snapshot else set()
    covered = snapshot.parts if snapshot else {}
    out = {}
    for run_id in run_ids:
        if run_id not in skip:
            shards = sorted(manifest.committed_shards(output_uri, run_id, storage_options) - covered.get(run_id, set()))
            if shards:
                out[run_id] = shards
    return out, snapshot is not None


def load(output_uri: str, storage_options: dict | None = None) -> Loaded:
    """The snapshot (if usable) and every committed part it does not cover."""
    snapshot = read(output_uri, storage_options)
    todo, usable = _uncovered(output_uri, snapshot, storage_options)
    snapshot = snapshot if usable else None
    uris = [manifest.part_uri(output_uri, run_id, s) for run_id, shards in todo.items() for s in shards]
    return Loaded(snapshot, uris, storage_options)


def compact(tables: Iterable[pa.Table]) -> pa.Table:
    """The distinct rows of SCHEMA tables."""
    tables = list(tables)
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables).group_by(COLUMNS, use_threads=False).aggregate([]).select(COLUMNS).cast(SCHEMA)


def write(output_uri: str, snap: Snapshot, storage_options: dict | None = None) -> None:
    covers = {
        "parts": {run_id: _ranges(shards) for run_id, shards in sorted(snap.parts.items())},
        "complete": sorted(snap.complete),
    }
    table = snap.table.replace_schema_metadata({METADATA_KEY: json.dumps(covers).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_atomic(snapshot_uri(output_uri), sink.getvalue().to_pybytes(), storage_options)


def update(output_uri: str, storage_options: dict | None = None) -> None:
    """Rewrite the snapshot to cover every committed part; called when a run becomes committed.

    A failure is logged, not raised: the run is committed already, and without a fresh snapshot
    the next plan reads the parts this one would have covered.
    """
    try:
        committed = {r.run_id for r in runs.load_all(output_uri, storage_options) if r.status == RunStatus.COMMITTED}
        loaded = load(output_uri, storage_options)  # listed after the records: a committed run's parts are all there
        parts = {run_id: set(shards) for run_id, shards in (loaded.snapshot.parts if loaded.snapshot else {}).items()}
        for uri in loaded.parts_read:
            run_id, name = uri.rsplit("/", 2)[-2:]
            parts.setdefault(run_id, set()).add(layout.shard_of_part(name))
        complete = (loaded.snapshot.complete if loaded.snapshot else set()) | (committed & set(parts))
        write(output_uri, Snapshot(compact(loaded.tables()), parts, complete), storage_options)
    except Exception as exc:
        log.warning("could not write the history snapshot of %s (%s)", storage.redact(output_uri), exc)
