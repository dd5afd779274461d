"""Delta Lake (``deltalake``, delta-rs) against darkroom's manifest parts + history snapshot, for the
history issue 19 measured: 128k rows committed as 2,000 parts of 64 rows (``shard_size: 64``).

Times, on local disk: writing the 2,000 parts (darkroom: one Parquet file each; Delta: one append,
i.e. one commit to the log, each), then reading the diff's columns back — darkroom every part (16
at a time), darkroom's snapshot after ``snapshot.update``, Delta's table as it stands, and Delta's
table after ``optimize.compact()`` (which rewrites the data files; old ones stay until vacuum).
``deltalake`` is not a darkroom dependency: ``pip install --target /tmp/dl deltalake`` and put
that folder on PYTHONPATH.

    PYTHONPATH=.:/tmp/dl .venv/bin/python benchmarks/delta_history.py [parts] [rows_per_part]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).parent.parent))

from pipeline import manifest, snapshot  # noqa: E402


def main() -> None:
    parts = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    per_part = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    import deltalake

    n = parts * per_part
    ids = pc.cast(pa.array(range(n), pa.int64()), pa.string())
    columns = {f.name: pa.nulls(n, f.type) for f in manifest.MANIFEST_SCHEMA}
    columns.update(
        run_id=pa.array(["r1"] * n),
        shard=pa.array([i // per_part for i in range(n)], pa.int32()),
        input_uri=pc.binary_join_element_wise("s3://archive/photos/", ids, ".jpg", ""),
        input_etag=pc.binary_join_element_wise("etag-", ids, ""),
        input_size=pa.array([100_000] * n, pa.int64()),
        steps=pa.array(["[]"] * n),
        models=pa.array([["identity"]] * n, pa.list_(pa.string())),
        weights_sha256=pa.array([[""]] * n, pa.list_(pa.string())),
        fingerprint=pa.array(["f" * 64] * n),
        status=pa.array(["ok"] * n),
        attempt=pa.array([1] * n, pa.int32()),
        committed_at=pa.array([0] * n, pa.timestamp("ms", tz="UTC")),
    )
    table = pa.table(columns, schema=manifest.MANIFEST_SCHEMA)
    out: dict[str, float] = {"parts": parts, "rows": n}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for k in range(parts):
            manifest.write_part(manifest.part_uri(tmp, "r1", k), table.slice(k * per_part, per_part))
        out["darkroom_write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        snapshot.update(tmp)
        out["darkroom_snapshot_update_s"] = time.perf_counter() - t0
        loaded = snapshot.load(tmp)
        t0 = time.perf_counter()
        rows = sum(t.num_rows for t in snapshot.Loaded(None, manifest.part_uris(tmp)).tables())
        out["darkroom_read_every_part_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = snapshot.load(tmp)
        rows_snap = sum(t.num_rows for t in loaded.tables())
        out["darkroom_read_snapshot_s"] = time.perf_counter() - t0
        assert rows == rows_snap == n and not loaded.parts_read

        delta = f"{tmp}/delta"
        t0 = time.perf_counter()
        for k in range(parts):
            deltalake.write_deltalake(delta, table.slice(k * per_part, per_part), mode="append")
        out["delta_write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = deltalake.DeltaTable(delta).to_pyarrow_table(columns=snapshot.COLUMNS)
        out["delta_read_s"] = time.perf_counter() - t0
        assert got.num_rows == n
        t0 = time.perf_counter()
        deltalake.DeltaTable(delta).optimize.compact()
        out["delta_compact_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = deltalake.DeltaTable(delta).to_pyarrow_table(columns=snapshot.COLUMNS)
        out["delta_read_after_compact_s"] = time.perf_counter() - t0
        assert got.num_rows == n
        out["delta_files_on_disk"] = len(list(Path(delta).glob("*.parquet")))
        out["deltalake_version"] = deltalake.__version__
    out = {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}
    print(json.dumps(out, indent=2))
    results = Path(__file__).parent / "results"
    (results / "delta_history.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **out}, indent=2))


if __name__ == "__main__":
    main()
