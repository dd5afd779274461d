"""The manifest's row vocabulary: statuses and stages are the Parquet strings, failing_as records a failure."""

from __future__ import annotations

import pyarrow as pa

from pipeline.manifest import Stage, Status, failed, failing_as


def test_status_and_stage_are_written_as_plain_strings():
    table = pa.Table.from_pylist([{"status": Status.ERROR, "stage": Stage.DECODE}])
    assert table.to_pylist() == [{"status": "error", "stage": "decode"}]
    assert [str(s) for s in Stage] == ["read", "decode", "mask", "model", "encode", "write"]


def test_failing_as_records_the_stage_type_and_message_and_stops_the_exception():
    row: dict = {}
    with failing_as(row, Stage.READ):
        pass
    assert row == {} and not failed(row)
    with failing_as(row, Stage.WRITE):
        raise PermissionError("denied at s3://user:secret@bucket/out/x.png " + "x" * 3000)
    assert failed(row) and (row["stage"], row["error_type"]) == ("write", "PermissionError")
    assert "secret" not in row["error_message"] and len(row["error_message"]) == 2000

    named: dict = {}
    with failing_as(named, Stage.MASK, lambda exc: ("mask_not_found", "no mask") if isinstance(exc, OSError) else None):
        raise FileNotFoundError("gone")
    assert (named["stage"], named["error_type"], named["error_message"]) == ("mask", "mask_not_found", "no mask")
    unnamed: dict = {}
    with failing_as(unnamed, Stage.DECODE, lambda exc: None):
        raise ValueError()
    assert (unnamed["error_type"], unnamed["error_message"]) == ("ValueError", "ValueError()")
