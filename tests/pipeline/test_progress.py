"""Progress lines: speeds people can read, and a resumed run's counts that include what was already committed."""

from __future__ import annotations

import io

from pipeline import progress, runs
from pipeline.api import inputs_in_shards


def test_speed_switches_to_seconds_per_image_below_one_image_a_second():
    assert progress.speed(2.34) == "2.3 img/s"
    assert progress.speed(1.0) == "1.0 img/s"
    assert progress.speed(1 / 14.2) == "14.2 s/img"  # a slow model on CPU printed "0.0 img/s"
    assert progress.speed(0.0) == "– img/s"


def _record(inputs: int, shard_size: int) -> runs.RunRecord:
    return runs.RunRecord(
        run_id="r",
        job_name="j",
        fingerprint="f",
        input_uri="in",
        output_uri="out",
        status="running",
        started_at=runs.now(),
        job={"resources": {"shard_size": shard_size}},
        shards=-(-inputs // shard_size),
        inputs=inputs,
    )


def test_inputs_in_shards_counts_full_shards_and_the_short_last_one():
    record = _record(inputs=10, shard_size=4)  # shards of 4, 4, 2
    assert inputs_in_shards(set(), record) == 0
    assert inputs_in_shards({0}, record) == 4
    assert inputs_in_shards({0, 2}, record) == 6
    assert inputs_in_shards({0, 1, 2}, record) == 10


def test_a_resumed_run_counts_inputs_committed_before_it():
    stream = io.StringIO()
    show = progress.PlainReporter(stream)
    show(
        {
            "event": "planned",
            "run_id": "r",
            "resumed": True,
            "inputs": 10,
            "inputs_done": 6,
            "shards": 3,
            "shards_to_run": 1,
            "categories": {"new": 10},
        }
    )
    counts = {"ok": 3, "error": 1}
    show({"event": "shard", "shard": 1, "counts": counts, "errors_by_stage": {"decode": 1}, "seconds": 1})
    planned, shard = stream.getvalue().splitlines()
    assert planned.startswith("resuming r: 10 inputs in 3 shards (6 already done, 1 to run;")
    assert "images 10/10 " in shard and "(3 ok, 1 error;" in shard
