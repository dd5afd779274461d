"""Recording a run's plan while the run executes: the listing is sharded and each plan shard written
from a background thread, and each shard id is handed to the driver as soon as its plan is written.

A shard runs only once its plan shard exists, so the plan shards written are the truth about an
interrupted listing. A run that died while its record said ``planning`` is continued: its written
plan shards are kept (and their shards run if uncommitted), the input is listed again, the inputs
already in a written plan shard are dropped, and the rest is sharded into the shard numbers not yet
used (first the gaps left by plan writes still in flight at the crash, then on from the highest).
Every input thus lands in exactly one shard; with an unchanged input the continued plan is the one
an uninterrupted listing would have written.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import runs, storage
from pipeline.job import Job
from pipeline.planning import PlanSummary, iter_shards
from pipeline.runs import RunStatus

WRITERS = 8  # plan shards written at once: one slow PUT does not hold up the shards listed after it
_DONE = object()


class PlanWriter:
    """Plans ``record`` (status ``planning``) in a background thread; iterating yields shard ids,
    each once its plan shard is written (the written shards of an interrupted listing first), and
    ends when the listing is done and the record is saved as ``running`` with the plan's totals.

    ``select`` (the incremental diff) filters the listing and fills ``summary.categories``.
    ``on_planned`` is called (from the planning thread) once the record is saved as ``running``;
    ``sizes`` then maps every planned shard to its number of inputs.
    """

    def __init__(
        self,
        job: Job,
        record: runs.RunRecord,
        summary: PlanSummary,
        select: Callable | None = None,
        on_planned: Callable[[], None] | None = None,
    ):
        self.job, self.record, self.summary, self.select = job, record, summary, select
        self.on_planned = on_planned
        self.sizes: dict[int, int] = {}
        self._ready: queue.SimpleQueue = queue.SimpleQueue()  # shard ids, then _DONE or an exception
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._plan, name="darkroom-plan", daemon=True)

    def start(self) -> PlanWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listing (the run failed): no more plan shards, and the record is not touched."""
        self._stop.set()

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self._ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _plan(self) -> None:
        try:
            self._ready.put(self._write_plan())
        except BaseException as exc:  # handed to the driver's thread, which fails the run with it
            self._ready.put(exc)

    def _write_plan(self) -> object:
        out, run_id = self.job.output, self.record.run_id
        opts = out.storage_options
        written = sorted(runs.planned_shards(out.uri, run_id, opts))
        with ThreadPoolExecutor(WRITERS) as pool:
            earlier = list(pool.map(lambda s: _uris_and_bytes(out.uri, run_id, s, opts), written))
        inputs, nbytes = sum(len(u) for u, _ in earlier), sum(b for _, b in earlier)
        for shard, (uris, _) in zip(written, earlier):
            self.sizes[shard] = len(uris)
            self._ready.put(shard)
        select = _without(self.select, pa.concat_arrays([u for u, _ in earlier]) if earlier else None)
        free = _free_indices(written)

        failed: list[BaseException] = []
        slots = threading.BoundedSemaphore(2 * WRITERS)  # plan tables held at once

        def write(shard: int, table: pa.Table) -> None:
            try:
                runs.save_plan_shard(out.uri, run_id, shard, table, opts)
                self._ready.put(shard)
            except BaseException as exc:
                failed.append(exc)
            finally:
                slots.release()

        with ThreadPoolExecutor(WRITERS) as pool:
            for planned in iter_shards(self.job, self.summary, select):
                if self._stop.is_set() or failed:
                    break
                shard = next(free)
                self.sizes[shard] = len(planned.table)
                slots.acquire()
                pool.submit(write, shard, planned.table)
        if failed:
            raise failed[0]
        if self._stop.is_set():
            return _DONE
        s, record = self.summary, self.record
        record.status, record.shards = RunStatus.RUNNING, len(written) + s.shards
        record.inputs, record.bytes = inputs + s.inputs, nbytes + s.bytes
        record.listed, record.categories = s.listed, s.categories
        runs.save(record, opts)
        if self.on_planned is not None:
            self.on_planned()
        return _DONE


def _uris_and_bytes(output_uri: str, run_id: str, shard: int, storage_options: dict | None) -> tuple[pa.Array, int]:
    """A written plan shard's input URIs and its inputs' bytes (size may be null: a list file's)."""
    data = storage.read_bytes(runs.plan_uri(output_uri, run_id, shard), storage_options)
    table = pq.read_table(io.BytesIO(data), columns=["input_uri", "size"])
    return table["input_uri"].combine_chunks(), pc.sum(table["size"]).as_py() or 0


def _without(select: Callable | None, planned: pa.Array | None) -> Callable | None:
    """``select``, then drop the inputs in ``planned`` (those an interrupted listing already planned)."""
    if planned is None:
        return select

    def selected(table: pa.Table) -> pa.Table:
        table = select(table) if select is not None else table
        return table.filter(pc.invert(pc.is_in(table["input_uri"], value_set=planned)))

    return selected


def _free_indices(written: list[int]) -> Iterator[int]:
    """Shard numbers not in ``written`` (sorted), lowest first."""
    taken = set(written)
    n = 0
    while True:
        if n not in taken:
            yield n
        n += 1
