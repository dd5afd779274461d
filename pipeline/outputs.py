"""Writing one model output: encode it, write it under ``<output>/images/``, record on its manifest row how that went.

A caption (a captioning step's result) goes into the row's ``caption`` column and, if
``output.caption_file`` asks, into a text or JSON file beside the outputs (``write_caption``).

The output is encoded as ``output.format`` asks.
Shared by every kind of job (restoration: pipeline.execute; generation: pipeline.generate).
A failure of one image is recorded on its row (pipeline.manifest.failing_as), never raised.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import numpy as np

from pipeline import errors, images, layout, storage
from pipeline.inference import Result, resize_plane
from pipeline.manifest import Stage, Status, fail, failed, failing_as
from pipeline.names import output_rel_path

if TYPE_CHECKING:
    from pipeline.driver import ShardContext


def encode_output(
    pixels: np.ndarray,
    alpha: np.ndarray | None,
    requested: str,
    source_format: str,
    quality: int,
    metadata: images.Metadata | None = None,
) -> images.Encoded:
    """H×W×C uint8/uint16 model output (+ the input's alpha plane, resized here to H×W) as the
    file ``output.format`` asks for (``requested``; `same` follows ``source_format``), carrying
    ``metadata`` (the input's EXIF/XMP) if given."""
    t0 = time.perf_counter()
    height, width = pixels.shape[:2]
    alpha = resize_plane(alpha, height, width) if alpha is not None else None
    fmt = images.choose_format(requested, source_format, alpha is not None)
    data = images.encode(pixels, alpha, fmt, quality, metadata)
    return images.Encoded(data, fmt, width, height, time.perf_counter() - t0)


def take_result(row: dict, result: Result) -> bool:
    """Record the model's part of ``result`` on ``row``: its seconds and caption, or its error
    (False)."""
    row["t_model"] = result.seconds
    if result.caption is not None:
        row["caption"] = result.caption
    if result.error:
        fail(row, result.stage, result.error_type, result.error)
        return False
    return True


def write_caption(
    ctx: ShardContext, row: dict, rel_path: str, caption: str, budget: storage.RetryBudget | None = None
) -> str | None:
    """Write ``caption`` beside the outputs as ``output.caption_file`` asks (``images/<rel_path>.txt``:
    the text and a newline; ``.json``: input, caption, models, weights and run); returns its URI,
    or None when no file is asked for or the write failed (recorded on ``row``, stage write)."""
    kind = ctx.job.output.caption_file
    if kind == "none":
        return None
    if kind == "txt":
        data = (caption + "\n").encode()
    else:
        record = {
            "input_uri": row["input_uri"],
            "caption": caption,
            "models": row["models"],
            "weights_sha256": row["weights_sha256"],
            "run_id": row["run_id"],
        }
        data = (json.dumps(record, ensure_ascii=False, indent=1) + "\n").encode()
    uri = layout.images_uri(ctx.job.output.uri, f"{rel_path}.{kind}")
    with failing_as(row, Stage.WRITE, lambda exc: errors.storage_error(exc, uri)):
        storage.write_atomic(uri, data, ctx.job.output.storage_options, budget)
        return uri
    return None


def write_output(
    ctx: ShardContext,
    row: dict,
    rel_path: str,
    result: Result,
    source_format: str,
    alpha: np.ndarray | None = None,
    metadata: images.Metadata | None = None,
    budget: storage.RetryBudget | None = None,
) -> None:
    """Encode one model output and write it to ``<output>/images/<rel_path>.<ext>``; fill in ``row``.

    ``result.pixels``: H×W×C uint8 (or uint16), or ``result.encoded``: the file the actor made.
    ``alpha``: the input's H'×W' uint8/uint16 alpha plane (resized here to the output's H×W), or
    None. ``source_format``: the input's format, what ``output.format`` `same` resolves to.
    ``metadata``: the input's EXIF/XMP to carry, or None. ``budget``: how long transient write
    errors are retried (the shard task's; None: a few times). A model error, or a failure to encode
    or write, is recorded on the row (stage model / encode / write) instead of raised.
    """
    out = ctx.job.output
    if not take_result(row, result):
        return
    with failing_as(row, Stage.ENCODE):
        encoded = result.encoded or encode_output(
            result.pixels, alpha, out.format, source_format, out.quality, metadata
        )
    if failed(row):
        return
    output_uri = layout.images_uri(out.uri, output_rel_path(rel_path, encoded.format))
    with failing_as(row, Stage.WRITE, lambda exc: errors.storage_error(exc, output_uri)):
        t1 = time.perf_counter()
        storage.write_atomic(output_uri, encoded.data, out.storage_options, budget)
        row.update(
            status=Status.OK,
            output_uri=output_uri,
            width_out=encoded.width,
            height_out=encoded.height,
            format_out=encoded.format,
            t_encode=encoded.seconds,
            t_write=time.perf_counter() - t1,
        )
