"""The Parquet manifest: its schema (declared once, here), writing parts, reading them back.

Layout under the output prefix::

    manifest/<run_id>/part-<shard:05d>.parquet    one part per committed shard
    _darkroom/runs/<run_id>/run.json              the run record (see pipeline.runs)
    _darkroom/runs/<run_id>/plan/shard-<n>.parquet  the recorded plan
    _darkroom/snapshot/history.parquet            what planning reads instead of every part (pipeline.snapshot)

A part is written atomically, so ``read_parquet('<output>/manifest/**/*.parquet')`` sees
exactly the committed rows of every run: a shard either has its whole part or none.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("input_uri", pa.string(), nullable=False),
        pa.field("input_size", pa.int64()),
        pa.field("input_etag", pa.string()),
        pa.field("input_mtime", pa.float64()),
        pa.field("mask_uri", pa.string()),  # the inpainting mask used; null when no step takes one
        pa.field("output_uri", pa.string()),  # null for error rows
        pa.field("width_in", pa.int32()),
        pa.field("height_in", pa.int32()),
        pa.field("width_out", pa.int32()),
        pa.field("height_out", pa.int32()),
        pa.field("mode_in", pa.string()),  # Pillow mode of the file, e.g. RGB, LA, P, I;16, CMYK
        pa.field("format_in", pa.string()),  # Pillow format, e.g. JPEG
        pa.field("format_out", pa.string()),  # png | jpeg | webp | tiff
        pa.field("steps", pa.string(), nullable=False),  # JSON: [{"model": …, "params": {…}}, …]
        pa.field("models", pa.list_(pa.string()), nullable=False),
        pa.field("weights_sha256", pa.list_(pa.string()), nullable=False),  # "" for steps without weights
        pa.field(
            "fingerprint", pa.string(), nullable=False
        ),  # digest of steps (or generator + seed + class) + weights + output format
        # Generation rows (null on restoration rows); their input_uri is generate://<model>/<seed>/<sample_index>.
        pa.field("seed", pa.int64()),  # the job seed
        pa.field("sample_index", pa.int64()),  # the sample's noise comes from (seed, sample_index) alone
        pa.field("sampler", pa.string()),  # ddpm | ddim | gan | vae
        pa.field("sampler_steps", pa.int32()),  # network evaluations per sample
        pa.field("class_label", pa.int32()),  # null for unconditional samples
        pa.field("status", pa.string(), nullable=False),  # ok | error
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("stage", pa.string()),  # where an error happened: read | decode | mask | model | encode | write
        pa.field("t_read", pa.float64()),  # seconds per stage, per image
        pa.field("t_decode", pa.float64()),
        pa.field("t_model", pa.float64()),  # the image's share of its batch's forward time
        pa.field("t_encode", pa.float64()),
        pa.field("t_write", pa.float64()),
        pa.field("attempt", pa.int32(), nullable=False),  # 1 for the first try of this shard
        pa.field("committed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)


def part_uri(output_uri: str, run_id: str, shard: int) -> str:
    return storage.join(output_uri, "manifest", run_id, f"part-{shard:05d}.parquet")


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts keyed by MANIFEST_SCHEMA names; missing keys are null) → a table."""
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def write_part(uri: str, table: pa.Table, storage_options: dict | None = None) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_atomic(uri, buf.getvalue(), storage_options)


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def shard_of(name: str) -> int:
    """``part-00042.parquet`` → 42."""
    return int(name[len("part-") : -len(".parquet")])


def committed_shards(output_uri: str, run_id: str, storage_options: dict | None = None) -> set[int]:
    names = storage.list_names(storage.join(output_uri, "manifest", run_id), storage_options)
    return {shard_of(n) for n in names if _is_part(n)}


def run_ids(output_uri: str, storage_options: dict | None = None) -> list[str]:
    """The runs with a folder under ``manifest/`` (at least one committed part), sorted."""
    return sorted(
        e["name"].rstrip("/").rsplit("/", 1)[-1]
        for e in storage.list_dir(storage.join(output_uri, "manifest"), storage_options)
        if e["type"] == "directory"
    )


def part_uris(output_uri: str, storage_options: dict | None = None, run_id: str | None = None) -> list[str]:
    """Every committed part (of one run, if given), in run then shard order."""
    base = storage.join(output_uri, "manifest")
    return [
        storage.join(base, rid, name)
        for rid in (run_ids(output_uri, storage_options) if run_id is None else [run_id])
        for name in storage.list_names(storage.join(base, rid), storage_options)
        if _is_part(name)
    ]


def read(
    output_uri: str, storage_options: dict | None = None, run_id: str | None = None, columns: list[str] | None = None
) -> pa.Table:
    """Committed rows (of one run, if given; only ``columns``, if given) as one table.

    Parts are read one by one through pipeline.storage, so transient storage errors are
    retried rather than mistaken for missing files.
    """
    schema = MANIFEST_SCHEMA if columns is None else pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])
    tables = list(iter_tables(output_uri, storage_options, run_id, columns))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def iter_tables(
    output_uri: str, storage_options: dict | None = None, run_id: str | None = None, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """``read``, one committed part at a time (for callers that reduce each part as it comes)."""
    names = MANIFEST_SCHEMA.names if columns is None else columns
    for uri in part_uris(output_uri, storage_options, run_id):
        yield pq.read_table(
            io.BytesIO(storage.read_bytes(uri, storage_options)), columns=columns, schema=MANIFEST_SCHEMA
        ).select(names)
