"""The Parquet manifest: its schema and its rows' vocabulary (declared once, here), writing parts, reading them.

One part per committed shard, at ``manifest/<run_id>/part-<shard:05d>.parquet`` under the
output prefix (pipeline.layout). A part is written atomically, so
``read_parquet('<output>/manifest/**/*.parquet')`` sees exactly the committed rows of every
run: a shard either has its whole part or none.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import layout, storage


class Status(StrEnum):
    """A row's ``status``: its image was written, or failed at a stage."""

    OK = "ok"
    ERROR = "error"


class Stage(StrEnum):
    """Where a row's error happened (its ``stage``); READ … WRITE also name its ``t_<stage>`` timings."""

    READ = "read"
    DECODE = "decode"
    MASK = "mask"  # reading the input's inpainting mask
    MODEL = "model"
    ENCODE = "encode"
    WRITE = "write"


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
        # per step, what the weights turned out to be: for `checkpoint` the architecture spandrel detected and its
        # scale (ESRGAN×4), for `ddpm` the UNet and schedule; "" for models that need no such note; null in old parts
        pa.field("model_details", pa.list_(pa.string())),
        pa.field(
            "fingerprint", pa.string(), nullable=False
        ),  # digest of steps (or generator + seed + class) + weights + output format
        # Generation rows (null on restoration rows); their input_uri is generate://<model>/<seed>/<sample_index>.
        pa.field("seed", pa.int64()),  # the job seed
        pa.field("sample_index", pa.int64()),  # the sample's noise comes from (seed, sample_index) alone
        pa.field("sampler", pa.string()),  # ddpm | ddim | gan | vae
        pa.field("sampler_steps", pa.int32()),  # network evaluations per sample
        pa.field("class_label", pa.int32()),  # null for unconditional samples
        # Text-to-image rows: input_uri is generate://<model>/<job seed>/<prompt_index>-<sample_index>; seed is the
        # prompt's own seed or the job's, the generator comes from (seed, prompt_index, sample_index) alone.
        pa.field("prompt_index", pa.int64()),  # the prompt's row in the job's prompts (from 0)
        pa.field("prompt", pa.string()),
        pa.field("negative_prompt", pa.string()),
        pa.field("guidance_scale", pa.float64()),  # classifier-free guidance the sample ran with
        # Restoration rows whose job has a captioning step: what it said of the image (null otherwise and in old parts).
        pa.field("caption", pa.string()),
        pa.field("status", pa.string(), nullable=False),  # Status: ok | error
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("stage", pa.string()),  # Stage, where an error happened: read | decode | mask | model | encode | write
        pa.field("t_read", pa.float64()),  # seconds per stage, per image
        pa.field("t_decode", pa.float64()),
        pa.field("t_model", pa.float64()),  # the image's share of its batch's forward time
        pa.field("t_encode", pa.float64()),
        pa.field("t_write", pa.float64()),
        pa.field("attempt", pa.int32(), nullable=False),  # 1 for the first try of this shard
        pa.field("committed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)


def fail(row: dict, stage: Stage, error_type: str, message: str) -> None:
    """Mark ``row`` as an error at ``stage`` (the message redacted and cut to 2,000 characters)."""
    row.update(
        status=Status.ERROR, stage=stage, error_type=error_type, error_message=storage.redact_text(message)[:2000]
    )


def failed(row: dict) -> bool:
    return row.get("status") == Status.ERROR


@contextmanager
def failing_as(
    row: dict, stage: Stage, explain: Callable[[Exception], tuple[str, str] | None] | None = None
) -> Iterator[None]:
    """Run the block as ``stage`` of ``row``'s image: an exception it raises is recorded on the
    row (``fail``) and not raised on. ``explain(exc)`` may name it: (error_type, message), or
    None for the default: the exception's class name and text."""
    try:
        yield
    except Exception as exc:
        error_type, message = (explain and explain(exc)) or (type(exc).__name__, str(exc) or repr(exc))
        fail(row, stage, error_type, message)


def part_uri(output_uri: str, run_id: str, shard: int) -> str:
    return layout.manifest_part_uri(output_uri, run_id, shard)


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts keyed by MANIFEST_SCHEMA names; missing keys are null) → a table."""
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def write_part(uri: str, table: pa.Table, storage_options: dict | None = None) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_atomic(uri, buf.getvalue(), storage_options)


def committed_shards(output_uri: str, run_id: str, storage_options: dict | None = None) -> set[int]:
    names = storage.list_names(layout.manifest_dir(output_uri, run_id), storage_options)
    return {layout.shard_of_part(n) for n in names if layout.is_manifest_part(n)}


def run_ids(output_uri: str, storage_options: dict | None = None) -> list[str]:
    """The runs with a folder under ``manifest/`` (at least one committed part), sorted."""
    return sorted(
        e["name"].rstrip("/").rsplit("/", 1)[-1]
        for e in storage.list_dir(layout.manifest_dir(output_uri), storage_options)
        if e["type"] == "directory"
    )


def part_uris(output_uri: str, storage_options: dict | None = None, run_id: str | None = None) -> list[str]:
    """Every committed part (of one run, if given), in run then shard order."""
    base = layout.manifest_dir(output_uri)
    return [
        storage.join(base, rid, name)
        for rid in (run_ids(output_uri, storage_options) if run_id is None else [run_id])
        for name in storage.list_names(storage.join(base, rid), storage_options)
        if layout.is_manifest_part(name)
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
