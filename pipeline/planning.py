"""Planning: list inputs, keep image files, cut the listing into deterministic shards.

A shard is a contiguous run of ``shard_size`` inputs in listing order (S3 key order, or a
sorted walk elsewhere) and the unit of commit. The listing is streamed: the driver holds
at most one shard's worth of entries as Python objects at a time, and each finished shard
becomes an Arrow table (PLAN_SCHEMA) that is handed on and then dropped.

A generation job's "inputs" are its sample indices ``start … start + samples - 1`` (text-to-image:
its (prompt, sample) pairs, the prompts read from the job or a list file), planned the
same way (GENERATION_PLAN_SCHEMA: PLAN_SCHEMA plus ``sample_index``), so the incremental diff,
the recorded plan and resume work unchanged.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline import names, storage
from pipeline.images import IMAGE_EXTENSIONS
from pipeline.job import GenerateSpec, InputSpec, Job, is_list_file
from pipeline.manifest import MANIFEST_SCHEMA

DIFF_ROWS = 262_144  # listed inputs per incremental-diff call
LIST_FILE_BATCH_ROWS = 65_536  # list-file rows per Arrow pass (the per-pass overhead dwarfs 1,000 rows' work)
PLAN_SCHEMA = pa.schema(
    [
        pa.field("input_uri", pa.string(), nullable=False),
        pa.field("rel_path", pa.string(), nullable=False),  # the input's output name (pipeline.names)
        pa.field("size", pa.int64()),  # null when a list file did not say
        pa.field("etag", pa.string()),
        pa.field("mtime", pa.float64()),  # seconds since the epoch
        pa.field("mask_uri", pa.string()),  # the inpainting mask of this input; null without one
    ]
)
# Generation: input_uri = generate://<model>/<seed>/<index>, rel_path = <index:08d>; no size, etag or mtime.
# Text-to-image: input_uri = generate://<model>/<seed>/<prompt_index>-<sample_index>, rel_path =
# <prompt_index:08d>-<sample_index:04d>, etag = a digest of the prompt row (a changed prompt runs again), and
# the prompt's fields (PROMPT_FIELDS); a prompt's unset guidance_scale / steps stay null (the model's defaults).
# The columns the manifest also records are its fields (declared once, in pipeline.manifest).
PROMPT_FIELDS = [
    *(MANIFEST_SCHEMA.field(name) for name in ("prompt_index", "prompt", "negative_prompt")),
    pa.field("prompt_seed", pa.int64()),  # the seed of this sample's generator: the prompt's own, or the job's
    MANIFEST_SCHEMA.field("guidance_scale"),
    pa.field("prompt_steps", pa.int32()),  # the manifest's sampler_steps once the model's default fills a null
]
GENERATION_PLAN_SCHEMA = pa.schema([*PLAN_SCHEMA, pa.field("sample_index", pa.int64(), nullable=False), *PROMPT_FIELDS])
PROMPT_COLUMNS = {
    "prompt": pa.string(),
    "negative_prompt": pa.string(),
    "seed": pa.int64(),
    "guidance_scale": pa.float64(),
    "steps": pa.int32(),
}
_EXT_CHARS = max(len(e) for e in IMAGE_EXTENSIONS)  # code points; lowercasing maps one to one
_REGEX_SPECIAL = set(".^$*+?()[]{}|-")


@dataclass
class Shard:
    index: int
    table: pa.Table  # PLAN_SCHEMA rows


@dataclass
class PlanSummary:
    """listed: image inputs found; inputs: those planned to run (after the incremental diff)."""

    listed: int = 0
    inputs: int = 0
    shards: int = 0
    bytes: int = 0
    skipped_not_image: int = 0
    skipped_masks: int = 0  # files matching input.mask: masks, not inputs
    examples_skipped: list[str] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)  # new / changed / unchanged / failed


def mask_regex(pattern: str) -> str:
    """A regex matching the paths (relative, or full URIs) of files that ``input.mask``
    names: ``{stem}_mask.png`` → ``(^|/)[^/]+_mask\\.png$``."""
    parts = re.split(r"\{(?:stem|name)\}", pattern)
    return "(^|/)" + "[^/]+".join(_regex_literal(p) for p in parts) + "$"


def _regex_literal(text: str) -> str:
    # Escaped by hand (not re.escape): the same regex runs in Python's re and in Arrow's RE2.
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


def mask_uri_for(uri: str, pattern: str) -> str:
    """The mask ``input.mask`` names for the image at ``uri``: the pattern, with {stem} (the
    file name without extension) and {name} (with it) filled in, in the image's folder."""
    folder, _, name = uri.rpartition("/")
    stem = posixpath.splitext(name)[0]
    return f"{folder}/{pattern.format(stem=stem, name=name)}" if folder else pattern.format(stem=stem, name=name)


_IMAGE_SUFFIX = "(" + "|".join(_regex_literal(e) for e in sorted(IMAGE_EXTENSIONS)) + ")$"


def _is_image(uri: str) -> bool:
    # A signed URL's extension is before its query string.
    return posixpath.splitext(storage.redact(uri).lower())[1] in IMAGE_EXTENSIONS


def _listed(spec: InputSpec) -> Iterator[tuple[str, str, int | None, str | None, float | None]]:
    """(uri, relative path, size, etag, mtime) for every file under a prefix or glob, in listing order."""
    root, pattern = storage.split_glob(spec.uri)
    matches = storage.glob_matcher(pattern) if pattern else None
    for entry in storage.iter_files(root, spec.storage_options):
        if matches is not None and not matches(entry.rel):
            continue
        yield entry.uri, entry.rel, entry.size, entry.etag, entry.mtime


_SCHEME_OR_ROOT = r"^([A-Za-z][A-Za-z0-9+.-]*://)?/?"  # dropped from a list file's URIs: their relative keys


def _list_file_tables(spec: InputSpec, rows: int, summary: PlanSummary) -> Iterator[pa.Table]:
    """A list file's image rows as PLAN_SCHEMA tables, computed column-wise with Arrow.

    The relative key of ``s3://bucket/a/b.jpg`` is ``bucket/a/b.jpg`` (scheme, credentials and a
    leading ``/`` dropped), so entries from different buckets or hosts cannot collide; its output
    name is ``names.output_name`` of that key.
    """
    first_row = 1
    for batch in read_table_file(spec.uri, spec.storage_options, rows):
        if "uri" not in batch.schema.names:
            raise ValueError(f"{spec.uri}: list file has no `uri` column (columns: {', '.join(batch.schema.names)})")
        _refuse_credentials(spec.uri, batch, first_row)
        first_row += batch.num_rows
        table = pa.Table.from_batches([batch])
        table = table.filter(pc.is_valid(table["uri"]))
        uris = table["uri"].combine_chunks().cast(pa.string())
        visible = storage.redact_array(uris)  # a signed URL's extension is before its query string
        # An image's extension (from the last dot, if no slash follows) ends the URI: an image
        # extension has no other dot or slash, so "ends with one" is the same test. Only the
        # last few characters are lowercased and matched.
        tail = pc.utf8_lower(pc.utf8_slice_codeunits(visible, -_EXT_CHARS))
        image = pc.match_substring_regex(tail, _IMAGE_SUFFIX)
        _count_skipped(summary, uris.filter(pc.invert(image)))
        if spec.mask:
            is_mask = pc.and_(image, pc.match_substring_regex(visible, mask_regex(spec.mask)))
            summary.skipped_masks += pc.sum(is_mask.cast(pa.int64())).as_py() or 0
            image = pc.and_(image, pc.invert(is_mask))
        n = pc.sum(image.cast(pa.int64())).as_py() or 0
        summary.listed += n
        if not n:
            continue

        def column(name: str, type_: pa.DataType, table: pa.Table = table) -> pa.Array:
            if name not in table.column_names:
                return pa.nulls(len(table), type_)
            return table[name].combine_chunks().cast(type_)

        plan = pa.Table.from_arrays(
            [
                uris,
                names.output_names(pc.replace_substring_regex(visible, _SCHEME_OR_ROOT, "", max_replacements=1)),
                column("size", pa.int64()),
                column("etag", pa.string()),
                pa.nulls(len(table), pa.float64()),
                _mask_uris(column("mask_uri", pa.string()), uris, spec.mask),
            ],
            schema=PLAN_SCHEMA,
        ).filter(image)
        for start in range(0, len(plan), rows):
            yield plan.slice(start, rows)


class ListFileError(ValueError):
    """A list file that cannot be planned; the message is one line naming the file and row."""


def _refuse_credentials(list_uri: str, batch: pa.RecordBatch, first_row: int) -> None:
    """A URI with user:password@ or a signed URL's query string would be written into the run's
    plan on the output (and a signed URL expires before a resume): refused, naming the first such
    row (1-based, counting data rows) and column, never the secret itself."""
    for name in ("uri", "mask_uri"):
        if name not in batch.schema.names:
            continue
        secret = pc.fill_null(
            pc.match_substring_regex(batch[name].cast(pa.string()), storage.CREDENTIALS_IN_URI), False
        )
        if pc.any(secret).as_py():
            row = first_row + pc.indices_nonzero(secret)[0].as_py()
            raise ListFileError(
                f"{storage.redact(list_uri)} row {row}: `{name}` holds credentials (user:password@, a signed URL's "
                "signature or token), which would be stored in the run's plan: list plain URIs and give credentials "
                "through the environment / a profile"
            )


def _mask_uris(given: pa.Array, uris: pa.Array, pattern: str | None) -> pa.Array:
    """A list file's ``mask_uri`` column, its gaps filled from ``input.mask`` (if set)."""
    if pattern is None or not given.null_count:
        return given
    return pa.array(
        [m if m is not None else mask_uri_for(u, pattern) for m, u in zip(given.to_pylist(), uris.to_pylist())],
        pa.string(),
    )


def _count_skipped(summary: PlanSummary, uris: pa.Array) -> None:
    summary.skipped_not_image += len(uris)
    room = 3 - len(summary.examples_skipped)
    if room > 0:
        summary.examples_skipped.extend(uris.slice(0, room).to_pylist())


def _listing_tables(spec: InputSpec, rows: int, summary: PlanSummary) -> Iterator[pa.Table]:
    """The image inputs as PLAN_SCHEMA tables of at most ``rows`` rows each."""
    if is_list_file(spec.uri):
        yield from _list_file_tables(spec, rows, summary)
        return
    buffer: list[tuple] = []
    is_mask = re.compile(mask_regex(spec.mask)).search if spec.mask else None
    for uri, rel, nbytes, etag, mtime in _listed(spec):
        if not _is_image(uri):
            _count_skipped(summary, pa.array([uri]))
            continue
        if is_mask is not None and is_mask(rel):
            summary.skipped_masks += 1
            continue
        buffer.append(
            (uri, names.output_name(rel), nbytes, etag, mtime, mask_uri_for(uri, spec.mask) if spec.mask else None)
        )
        summary.listed += 1
        if len(buffer) == rows:
            yield _table(buffer)
            buffer = []
    if buffer:
        yield _table(buffer)


def _sample_tables(spec: GenerateSpec, rows: int, summary: PlanSummary) -> Iterator[pa.Table]:
    """A generation job's sample indices as GENERATION_PLAN_SCHEMA tables of at most ``rows`` rows."""
    stop = spec.start + spec.samples
    for first in range(spec.start, stop, rows):
        index = pa.array(range(first, min(first + rows, stop)), pa.int64())
        text = pc.cast(index, pa.string())
        n = len(index)
        summary.listed += n
        given = {
            "input_uri": pc.binary_join_element_wise(spec.uri_prefix, text, ""),
            "rel_path": pc.utf8_lpad(text, 8, "0"),
            "sample_index": index,
        }
        columns = [
            given.get(f.name, pa.nulls(n, f.type)) for f in GENERATION_PLAN_SCHEMA
        ]  # the rest (size, etag, …) null
        yield pa.Table.from_arrays(columns, schema=GENERATION_PLAN_SCHEMA)


def read_table_file(uri: str, storage_options: dict | None, rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet / CSV / JSONL file at an fsspec URI (a list file)."""
    fs, path = storage.filesystem(uri, storage_options)
    with fs.open(path, "rb") as fh:
        lower = uri.lower()
        if lower.endswith(".parquet"):
            yield from pq.ParquetFile(fh).iter_batches(batch_size=max(rows, LIST_FILE_BATCH_ROWS))
        elif lower.endswith(".csv"):
            yield from pacsv.open_csv(fh)
        else:
            yield from pajson.read_json(fh).to_batches(max_chunksize=max(rows, LIST_FILE_BATCH_ROWS))


def prompt_table(spec: GenerateSpec, storage_options: dict | None = None) -> pa.Table:
    """A text-to-image job's prompts, one row per prompt in order: PROMPT_COLUMNS (absent ones null).
    A list file is read with ``storage_options``; a row without a prompt is refused (its number in the message)."""
    if isinstance(spec.prompts, str):
        batches = list(read_table_file(spec.prompts, storage_options, LIST_FILE_BATCH_ROWS))
        table = pa.Table.from_batches(batches) if batches else pa.table({"prompt": pa.array([], pa.string())})
        where = spec.prompts
    else:
        table = pa.Table.from_pylist([{"prompt": p} if isinstance(p, str) else p.model_dump() for p in spec.prompts])
        where = "generate.prompts"
    if "prompt" not in table.column_names:
        raise ValueError(f"{where}: no `prompt` column (columns: {', '.join(table.column_names)})")
    if not len(table):
        raise ValueError(f"{where}: no prompts")
    columns = {
        name: table[name].combine_chunks().cast(type_) if name in table.column_names else pa.nulls(len(table), type_)
        for name, type_ in PROMPT_COLUMNS.items()
    }
    negative = columns["negative_prompt"]  # a CSV's empty cell is no negative prompt
    columns["negative_prompt"] = pc.if_else(
        pc.equal(pc.utf8_length(negative), 0), pa.scalar(None, pa.string()), negative
    )
    empty = pc.fill_null(pc.equal(pc.utf8_length(columns["prompt"]), 0), True)
    if pc.any(empty).as_py():
        raise ValueError(f"{where}: row {pc.index(empty, True).as_py()} has no prompt")
    return pa.table(columns)


def _prompt_tables(
    spec: GenerateSpec, rows: int, summary: PlanSummary, storage_options: dict | None
) -> Iterator[pa.Table]:
    """A text-to-image job's (prompt, sample) pairs as GENERATION_PLAN_SCHEMA tables of at most ``rows`` rows."""
    buffer: list[dict] = []
    for p_index, p in enumerate(prompt_table(spec, storage_options).to_pylist()):
        seed = p["seed"] if p["seed"] is not None else spec.seed
        etag = hashlib.sha256(json.dumps([p, seed], sort_keys=True).encode()).hexdigest()[:16]
        for sample in range(spec.samples_per_prompt):
            buffer.append(
                {
                    "input_uri": f"{spec.uri_prefix}{p_index}-{sample}",
                    "rel_path": f"{p_index:08d}-{sample:04d}",
                    "etag": etag,
                    "sample_index": sample,
                    "prompt_index": p_index,
                    "prompt": p["prompt"],
                    "negative_prompt": p["negative_prompt"],
                    "prompt_seed": seed,
                    "guidance_scale": p["guidance_scale"],
                    "prompt_steps": p["steps"],
                }
            )
            if len(buffer) == rows:
                summary.listed += len(buffer)
                yield pa.Table.from_pylist(buffer, schema=GENERATION_PLAN_SCHEMA)
                buffer = []
    if buffer:
        summary.listed += len(buffer)
        yield pa.Table.from_pylist(buffer, schema=GENERATION_PLAN_SCHEMA)


def iter_shards(
    job: Job, summary: PlanSummary | None = None, select: Callable[[pa.Table], pa.Table] | None = None
) -> Iterator[Shard]:
    """Stream the job's inputs (or sample indices) as shards of ``shard_size`` rows.

    ``select`` (e.g. the incremental diff) filters chunks of the listing before sharding;
    ``summary`` (if given) is filled in on the way.
    """
    summary = summary if summary is not None else PlanSummary()
    size = job.resources.shard_size
    if job.generate is not None and job.generate.prompts is not None:
        tables = _prompt_tables(job.generate, size, summary, job.output.storage_options)
        pending = GENERATION_PLAN_SCHEMA.empty_table()
    elif job.generate is not None:
        pending, tables = GENERATION_PLAN_SCHEMA.empty_table(), _sample_tables(job.generate, size, summary)
    else:
        pending, tables = PLAN_SCHEMA.empty_table(), _listing_tables(job.input, size, summary)
    for table in _selected(tables, select, size):
        pending = pa.concat_tables([pending, table])
        while len(pending) >= size:
            yield _shard(summary, pending.slice(0, size))
            pending = pending.slice(size)
    if len(pending):
        yield _shard(summary, pending)


def _selected(
    tables: Iterator[pa.Table], select: Callable[[pa.Table], pa.Table] | None, first_rows: int
) -> Iterator[pa.Table]:
    """Apply ``select`` to chunks of listed inputs (held as Arrow, not Python objects): the
    first of ``first_rows``, each next twice as large, up to DIFF_ROWS. The diff's cost is
    dominated by hashing the history once per call, hence large chunks; the small first ones
    let the first shards (and so the run's first outputs) come before much of the listing."""
    if select is None:
        yield from tables
        return
    chunk: list[pa.Table] = []
    rows, want = 0, min(first_rows, DIFF_ROWS)
    for table in tables:
        chunk.append(table)
        rows += len(table)
        if rows >= want:
            yield select(pa.concat_tables(chunk))
            chunk, rows, want = [], 0, min(2 * want, DIFF_ROWS)
    if chunk:
        yield select(pa.concat_tables(chunk))


def _shard(summary: PlanSummary, table: pa.Table) -> Shard:
    shard = Shard(summary.shards, table.combine_chunks())
    summary.shards += 1
    summary.inputs += len(table)
    summary.bytes += pc.sum(table["size"]).as_py() or 0
    return shard


def _table(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows))
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, PLAN_SCHEMA)], schema=PLAN_SCHEMA
    )
