"""What a run should do, given what earlier runs committed: the incremental diff.

Each listed input is classified against the committed manifest rows that share the
job's fingerprint (same steps, params, weights and output format):

- ``unchanged``: an ``ok`` row exists for the same version of the input,
- ``failed``: only ``error`` rows exist for this version,
- ``changed``: the URI appears in the manifest, but not for this version or fingerprint,
- ``new``: the URI never appears.

A version is the object's ETag, else ``size:mtime``. Inputs whose version is unknown at
planning time (list files without size/etag columns, generation samples) match on URI alone.

Modes: ``incremental`` runs new + changed + failed, ``retry-errors`` runs failed only,
``overwrite`` runs everything. All of it is Arrow compute and NumPy over key columns: no
Python object per row, so it scales to manifests of millions of rows.

The listing is diffed in chunks, so the manifest side must not be rebuilt per chunk (an
Arrow ``is_in`` hashes its whole value set on every call). Each set (ok keys, seen URIs, …)
is built once, on first use, as sorted 64-bit hashes of its strings plus the manifest row each
came from; a chunk's strings are hashed and looked up, and every hash hit is confirmed by
comparing the full strings, so a hash collision can never make an input look unchanged. A row
is looked up only until it is decided, so an all-"unchanged" listing needs one lookup per row.

Why not a library's hash join: pyarrow's (Acero, ``Table.join``) or DuckDB's build their hash
table per call, so with a streamed listing each chunk either re-hashes the whole history (history
as the build side) or probes all of it (the chunk as the build side, the cheaper one): per chunk
the cost grows with the history, in total with listing × history. Measured side by side
(benchmarks/diff_scale.py, same data, every input unchanged; docs/benchmarks.md): the join took
3.6–4.5 s of CPU against 1.9–2.4 s for this code at 1M rows, and 61.0 s against 27.6 s at 10M.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import snapshot, storage
from pipeline.manifest import Status

CATEGORIES = ("new", "changed", "unchanged", "failed")
RUN_CATEGORIES = {"incremental": {"new", "changed", "failed"}, "retry-errors": {"failed"}, "overwrite": set(CATEGORIES)}
HISTORY_COLUMNS = snapshot.COLUMNS
_HASH_ROWS = 1 << 20  # strings hashed per block: bounds the padded copy of their bytes
_MUL = np.uint64(0x9E3779B97F4A7C15)
_FINAL = np.uint64(0xBF58476D1CE4E5B9)
_NUL = pa.scalar("\x00", pa.large_string())  # version_keys' separator, for the history's large strings
_LOW_BYTES = np.array(
    [(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], np.uint64
)  # [k]: the low k bytes of a word


def versions(etags: pa.Array, sizes: pa.Array, mtimes: pa.Array) -> pa.Array:
    """An input's version: its ETag, else ``size:mtime``; null where neither is known."""
    size_mtime = pc.binary_join_element_wise(pc.cast(sizes, pa.string()), pc.cast(mtimes, pa.string()), ":")
    return pc.coalesce(etags, size_mtime)


def version_keys(uris: pa.Array, etags: pa.Array, sizes: pa.Array, mtimes: pa.Array) -> pa.Array:
    """``uri \\0 version`` per row; null where the version is unknown."""
    return pc.binary_join_element_wise(uris, versions(etags, sizes, mtimes), "\x00")


def string_hashes(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each string's UTF-8 bytes: uint64, shape (len(strings),).

    Equal strings hash equally; nulls hash like "" (callers leave them out). Not a
    cryptographic hash: a hit must be confirmed on the strings themselves.
    """
    chunks = strings.chunks if isinstance(strings, pa.ChunkedArray) else [strings]
    parts = [_hash_block(c.slice(s, _HASH_ROWS)) for c in chunks for s in range(0, len(c), _HASH_ROWS)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def _hash_block(strings: pa.Array) -> np.ndarray:
    """``string_hashes`` of one string/large_string array, 8 bytes of every string per step."""
    n = len(strings)
    wide = pa.types.is_large_string(strings.type) or pa.types.is_large_binary(strings.type)
    offset_type = np.int64 if wide else np.int32
    _, offsets_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(offsets_buf, offset_type, n + 1, strings.offset * offset_type().itemsize).astype(np.int64)
    first, last = int(offsets[0]), int(offsets[-1])
    starts, lengths = offsets[:-1] - first, np.diff(offsets)
    longest, shortest = int(lengths.max(initial=0)), int(lengths.min(initial=0))
    padded = np.zeros(last - first + longest + 8, np.uint8)  # word reads past a string's end stay inside
    if last > first:
        padded[: last - first] = np.frombuffer(data_buf, np.uint8, last - first, first)
    words = np.ndarray((last - first + longest + 1,), "<u8", padded, strides=(1,))  # the 8 bytes at each position
    h = lengths.astype(np.uint64) * _FINAL  # the length is hashed too: "a" and "a\0" differ
    rows = None  # every row (ended ones left as they are); once few strings are left, just those
    for at in range(0, longest, 8):
        if rows is None and at + 8 > shortest and np.count_nonzero(lengths > at) < n // 4:
            rows = np.flatnonzero(lengths > at)
        if rows is None:
            word = words[starts + at]
            if at + 8 > shortest:
                word &= _LOW_BYTES[np.clip(lengths - at, 0, 8)]
            mixed = (h ^ word) * _MUL
            mixed ^= mixed >> np.uint64(29)
            h = mixed if at + 8 <= shortest else np.where(lengths > at, mixed, h)  # ended strings stay as they were
        else:
            rows = rows[lengths[rows] > at]
            word = words[starts[rows] + at] & _LOW_BYTES[np.minimum(lengths[rows] - at, 8)]
            mixed = (h[rows] ^ word) * _MUL
            h[rows] = mixed ^ (mixed >> np.uint64(29))
    h ^= h >> np.uint64(32)
    h *= _FINAL
    return h ^ (h >> np.uint64(29))


class _Lookup:
    """Membership in a set of strings: their hashes, sorted and bucketed by their top bits (about
    one per bucket, so a lookup touches a few entries rather than binary-searching), and for
    each the manifest row it came from, so that a hash hit is confirmed on the full string
    (``strings_of(rows)``)."""

    def __init__(self, hashes: np.ndarray, rows: np.ndarray, strings_of: Callable[[np.ndarray], pa.Array]):
        order = np.argsort(hashes)
        self.hashes, self.rows, self.strings_of = hashes[order], rows[order], strings_of
        self.shift = np.uint64(64 - max(1, len(hashes).bit_length() - 1))
        counts = np.bincount((self.hashes >> self.shift).astype(np.intp), minlength=1 << (64 - int(self.shift)))
        self.bucket_starts = np.concatenate([[0], np.cumsum(counts)])  # bucket b: hashes[starts[b] : starts[b + 1]]

    def contains(self, values: pa.Array) -> np.ndarray:
        """bool per value (``values`` has no nulls)."""
        found = np.zeros(len(values), bool)
        if not len(self.hashes) or not len(values):
            return found
        hashes = string_hashes(values)
        bucket = (hashes >> self.shift).astype(np.intp)
        at, end = self.bucket_starts[bucket], self.bucket_starts[bucket + 1]
        todo = np.arange(len(values))
        while todo.size:  # move to the bucket's first entry not below the value's hash
            todo = todo[at[todo] < end[todo]]
            todo = todo[self.hashes[at[todo]] < hashes[todo]]
            at[todo] += 1
        todo = np.arange(len(values))
        while True:
            todo = todo[at[todo] < end[todo]]
            todo = todo[self.hashes[at[todo]] == hashes[todo]]
            if not todo.size:
                return found
            equal = pc.equal(values.take(todo), self.strings_of(self.rows[at[todo]])).to_numpy(zero_copy_only=False)
            found[todo[equal]] = True
            todo = todo[~equal]
            at[todo] += 1  # a collision: try the set's next entry with the same hash


@dataclass
class History:
    """The key columns of committed manifest rows, one entry per row.

    ``uris``: every row's input URI (large_string, as the manifest records it); ``versions``:
    the row's version (large_string) for rows of the job's fingerprint, else null; ``ok`` /
    ``error``: bool (n,), the row has the job's fingerprint and status ok / not ok. The sets
    the diff asks about are built from these on first use.
    """

    uris: pa.Array
    versions: pa.Array
    ok: np.ndarray
    error: np.ndarray

    @classmethod
    def from_tables(cls, tables: Iterable[pa.Table], fingerprint: str) -> History:
        """From manifest tables with (at least) HISTORY_COLUMNS, reduced one at a time."""
        uris, kept, ok, error = [], [], [], []
        for table in tables:
            same = pc.fill_null(pc.equal(table["fingerprint"], fingerprint), False)
            is_ok = pc.equal(table["status"], Status.OK)
            version = versions(table["input_etag"], table["input_size"], table["input_mtime"])
            # large_string: one contiguous array (a chunked take is far slower) of any size
            uris.append(table["input_uri"].combine_chunks().cast(pa.large_string()))
            kept.append(
                pc.if_else(same, version, None).combine_chunks().cast(pa.large_string())
            )  # other fingerprints' are never asked for
            ok.append(pc.and_(same, pc.fill_null(is_ok, False)).to_numpy())
            error.append(pc.and_(same, pc.fill_null(pc.invert(is_ok), False)).to_numpy())
        if not uris:
            return cls(
                pa.array([], pa.large_string()), pa.array([], pa.large_string()), np.zeros(0, bool), np.zeros(0, bool)
            )
        return cls(pa.concat_arrays(uris), pa.concat_arrays(kept), np.concatenate(ok), np.concatenate(error))

    @classmethod
    def empty(cls) -> History:
        return cls.from_tables([], "")

    def _uris_of(self, rows: np.ndarray) -> pa.Array:
        return self.uris.take(rows)

    def _keys_of(self, rows: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(self.uris.take(rows), self.versions.take(rows), _NUL)

    @cached_property
    def _uri_hashes(self) -> np.ndarray:
        return string_hashes(self.uris)

    @cached_property
    def _key_hashes(self) -> np.ndarray:  # of uri \0 version; rows without a version hash as ""
        n = len(self.uris)
        blocks = [
            string_hashes(
                pc.binary_join_element_wise(self.uris.slice(s, _HASH_ROWS), self.versions.slice(s, _HASH_ROWS), _NUL)
            )
            for s in range(0, n, _HASH_ROWS)
        ]
        return np.concatenate(blocks) if n else np.zeros(0, np.uint64)

    def _uri_lookup(self, mask: np.ndarray) -> _Lookup:
        rows = np.flatnonzero(mask & self.uris.is_valid().to_numpy(zero_copy_only=False))
        return _Lookup(self._uri_hashes[rows], rows, self._uris_of)

    def _key_lookup(self, mask: np.ndarray) -> _Lookup:
        valid = self.uris.is_valid().to_numpy(zero_copy_only=False) & self.versions.is_valid().to_numpy(
            zero_copy_only=False
        )
        rows = np.flatnonzero(mask & valid)
        return _Lookup(self._key_hashes[rows], rows, self._keys_of)

    @cached_property
    def ok_keys(self) -> _Lookup:
        return self._key_lookup(self.ok)

    @cached_property
    def error_keys(self) -> _Lookup:
        return self._key_lookup(self.error)

    @cached_property
    def ok_uris(self) -> _Lookup:
        return self._uri_lookup(self.ok)

    @cached_property
    def error_uris(self) -> _Lookup:  # for inputs of unknown version
        return self._uri_lookup(self.error)

    @cached_property
    def seen_uris(self) -> _Lookup:  # any fingerprint
        return self._uri_lookup(np.ones(len(self.uris), bool))


def load_history(output_uri: str, fingerprint: str, storage_options: dict | None = None) -> History:
    """Key columns of the committed manifest rows under ``output_uri``: the history snapshot plus the
    parts it does not cover (pipeline.snapshot; rows that repeat another's key columns may be left out)."""
    return History.from_tables(snapshot.load(output_uri, storage_options).tables(), fingerprint)


def classify(plan: pa.Table, history: History) -> pa.Array:
    """One category per row of a PLAN_SCHEMA table.

    Each row is looked up only until it is decided: by version key (or, when its version is
    unknown, by URI) among ok rows, then among error rows, then by URI among all rows.
    """
    uris = storage.redact_array(plan["input_uri"].combine_chunks())  # as the manifest records them
    keys = version_keys(uris, plan["etag"], plan["size"], plan["mtime"])
    known = keys.is_valid().to_numpy(zero_copy_only=False)
    unchanged, failed, seen = (np.zeros(len(plan), bool) for _ in range(3))
    for rows, values, ok_set, error_set in (
        (np.flatnonzero(known), keys, "ok_keys", "error_keys"),
        (np.flatnonzero(~known), uris, "ok_uris", "error_uris"),
    ):
        if rows.size:
            hit = getattr(history, ok_set).contains(values.take(rows))
            unchanged[rows[hit]] = True
            rows = rows[~hit]
        if rows.size:
            failed[rows[getattr(history, error_set).contains(values.take(rows))]] = True
    rows = np.flatnonzero(~(unchanged | failed))
    if rows.size:
        seen[rows[history.seen_uris.contains(uris.take(rows))]] = True
    unchanged, failed, seen = pa.array(unchanged), pa.array(failed), pa.array(seen)
    return pc.if_else(unchanged, "unchanged", pc.if_else(failed, "failed", pc.if_else(seen, "changed", "new")))


def select(plan: pa.Table, history: History, mode: str, counts: dict[str, int]) -> pa.Table:
    """The rows of ``plan`` that ``mode`` runs; adds each row's category to ``counts``."""
    categories = classify(plan, history)
    for item in pc.value_counts(categories).to_pylist():
        counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return plan.filter(pc.is_in(categories, value_set=pa.array(sorted(RUN_CATEGORIES[mode]))))
