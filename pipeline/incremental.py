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
``overwrite`` runs everything. All of it is Arrow compute over key columns: no Python
object per row, so it scales to manifests of millions of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import manifest, storage

CATEGORIES = ("new", "changed", "unchanged", "failed")
RUN_CATEGORIES = {"incremental": {"new", "changed", "failed"}, "retry-errors": {"failed"}, "overwrite": set(CATEGORIES)}


def version_keys(uris: pa.Array, etags: pa.Array, sizes: pa.Array, mtimes: pa.Array) -> pa.Array:
    """``uri \\0 version`` per row; null where the version is unknown."""
    size_mtime = pc.binary_join_element_wise(pc.cast(sizes, pa.string()), pc.cast(mtimes, pa.string()), ":")
    version = pc.coalesce(etags, size_mtime)
    return pc.binary_join_element_wise(uris, version, "\x00")


@dataclass
class History:
    ok_keys: pa.Array
    ok_uris: pa.Array
    error_keys: pa.Array
    seen_uris: pa.Array
    error_uris: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))  # for inputs of unknown version

    @classmethod
    def empty(cls) -> "History":
        nothing = pa.array([], pa.string())
        return cls(nothing, nothing, nothing, nothing)


def load_history(output_uri: str, fingerprint: str, storage_options: dict | None = None) -> History:
    """Key columns of every committed manifest row under ``output_uri``."""
    columns = ["input_uri", "input_etag", "input_size", "input_mtime", "fingerprint", "status"]
    table = manifest.read(output_uri, storage_options, columns=columns)
    same = table.filter(pc.equal(table["fingerprint"], fingerprint))
    keys = version_keys(same["input_uri"], same["input_etag"], same["input_size"], same["input_mtime"])
    ok = pc.equal(same["status"], "ok")
    return History(
        ok_keys=pc.unique(pc.drop_null(keys.filter(ok))),
        ok_uris=pc.unique(same["input_uri"].filter(ok)),
        error_keys=pc.unique(pc.drop_null(keys.filter(pc.invert(ok)))),
        seen_uris=pc.unique(table["input_uri"]),
        error_uris=pc.unique(same["input_uri"].filter(pc.invert(ok))),
    )


def classify(plan: pa.Table, history: History) -> pa.Array:
    """One category per row of a PLAN_SCHEMA table."""
    uris = storage.redact_array(plan["input_uri"].combine_chunks())  # as the manifest records them
    keys = version_keys(uris, plan["etag"], plan["size"], plan["mtime"])
    unknown_version = pc.is_null(keys)
    unchanged = pc.or_(
        pc.fill_null(pc.is_in(keys, value_set=history.ok_keys), False),
        pc.and_(unknown_version, pc.is_in(uris, value_set=history.ok_uris)),
    )
    failed = pc.and_(
        pc.invert(unchanged),
        pc.or_(
            pc.fill_null(pc.is_in(keys, value_set=history.error_keys), False),
            pc.and_(unknown_version, pc.is_in(uris, value_set=history.error_uris)),
        ),
    )
    seen = pc.is_in(uris, value_set=history.seen_uris)
    return pc.if_else(unchanged, "unchanged", pc.if_else(failed, "failed", pc.if_else(seen, "changed", "new")))


def select(plan: pa.Table, history: History, mode: str, counts: dict[str, int]) -> pa.Table:
    """The rows of ``plan`` that ``mode`` runs; adds each row's category to ``counts``."""
    categories = classify(plan, history)
    for item in pc.value_counts(categories).to_pylist():
        counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return plan.filter(pc.is_in(categories, value_set=pa.array(sorted(RUN_CATEGORIES[mode]))))
