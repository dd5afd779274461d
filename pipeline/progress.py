"""Showing a run as it goes: a live progress bar, plain lines, or JSON lines for schedulers.

``pipeline.api.run`` emits events as plain dicts:

- ``planning``  {input}: the listing starts (not sent when resuming a run whose plan is complete)
- ``planned``   {run_id, resumed, inputs, inputs_done, shards, shards_to_run, categories}: the plan is
  complete, with its totals (``inputs_done``: inputs of shards an earlier attempt of a resumed run
  already committed); sent as soon as the listing is done. Shards run while the listing goes on,
  so ``shard`` events may come before it.
- ``shard``     {shard, counts: {status: n}, errors_by_stage: {stage: n}, seconds}
- ``finished``  the RunSummary as a dict

So a new run sends ``planning``, ``shard``…, ``planned``, ``shard``…, ``finished``; a resumed run
whose plan was complete sends ``planned``, ``shard``…, ``finished``.

A reporter turns them into output; ``reporter(fmt)`` picks one (``auto``: the live bar on a
terminal, JSON lines otherwise).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.manifest import Status


class Tally:
    """Running totals shared by the human-readable reporters."""

    def __init__(self) -> None:
        self.total: int | None = None  # inputs planned; None until the ``planned`` event
        self.done_before = 0  # inputs committed before this process started (a resumed run)
        self.shards_to_run = 0
        self.shards_done = 0
        self.counts: Counter = Counter()
        self.errors_by_stage: Counter = Counter()
        self.started = time.monotonic()

    def start(self, planned: dict) -> None:
        """Totals from the ``planned`` event: a resumed run counts what was committed before."""
        self.total, self.shards_to_run = planned["inputs"], planned["shards_to_run"]
        self.done_before = planned.get("inputs_done", 0)
        if not self.shards_done:  # shards that ran while listing count towards the rate
            self.started = time.monotonic()

    def add(self, event: dict) -> None:
        self.shards_done += 1
        self.counts.update(event["counts"])
        self.errors_by_stage.update(event["errors_by_stage"])

    @property
    def done(self) -> int:
        """Inputs with a committed row, this process's and earlier attempts'."""
        return self.done_before + sum(self.counts.values())

    @property
    def rate(self) -> float:
        """Inputs per second done by this process (earlier attempts' rows are not its work)."""
        return sum(self.counts.values()) / max(1e-9, time.monotonic() - self.started)

    def line(self) -> str:
        failed = ", ".join(f"{stage} {n}" for stage, n in sorted(self.errors_by_stage.items())) or "none"
        if self.total is None:  # still listing: no totals yet
            shards, images, eta = f"{self.shards_done}/?", f"{self.done}/?", "ETA – s"
        else:
            left = (self.total - self.done) / self.rate if self.rate > 0 else float("nan")
            shards, images, eta = (
                f"{self.shards_done}/{self.shards_to_run}",
                f"{self.done}/{self.total}",
                f"ETA {left:.0f} s",
            )
        return (
            f"shards {shards} · images {images} "
            f"({self.counts.get(Status.OK, 0)} ok, {self.counts.get(Status.ERROR, 0)} error; "
            f"failed by stage: {failed}) · "
            f"{speed(self.rate)} · {eta}"
        )


def speed(rate: float) -> str:
    """``rate`` (inputs/s) as people read it: ``2.3 img/s``, or ``14.2 s/img`` below one image a second
    (a slow model on CPU showed "0.0 img/s")."""
    if rate <= 0:
        return "– img/s"
    return f"{rate:.1f} img/s" if rate >= 1 else f"{1 / rate:.1f} s/img"


def _planned_line(event: dict) -> str:
    cats = event["categories"] or {}
    verb = "resuming" if event["resumed"] else "running"
    done = f"{event['inputs_done']} already done, " if event.get("inputs_done") else ""
    return (
        f"{verb} {event['run_id']}: {event['inputs']} inputs in {event['shards']} shards "
        f"({done}{event['shards_to_run']} to run; {cats.get('new', 0)} new, {cats.get('changed', 0)} changed, "
        f"{cats.get('unchanged', 0)} unchanged, {cats.get('failed', 0)} previously failed)"
    )


class PlainReporter:
    """One line per event on ``stream`` (stderr): for logs and CI."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tally = Tally()

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "planning":
            print(f"planning: listing {event['input']}", file=self.stream)
        elif kind == "planned":
            self.tally.start(event)
            print(_planned_line(event), file=self.stream)
        elif kind == "shard":
            self.tally.add(event)
            print(self.tally.line(), file=self.stream)
        self.stream.flush()


class RichReporter:
    """A live progress bar on the terminal."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.tally = Tally()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = None

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "planning":
            self.console.print(f"planning: listing {event['input']}")
            self._start(None)  # shards run while listing: a bar without a total until ``planned``
        elif kind == "planned":
            self.console.print(_planned_line(event))
            self.tally.start(event)
            self._start(event["inputs"])
            self.progress.update(self.task, total=event["inputs"], completed=self.tally.done)
        elif kind == "shard" and self.task is not None:
            self.tally.add(event)
            t = self.tally
            detail = f"{t.counts.get(Status.OK, 0)} ok · {t.counts.get(Status.ERROR, 0)} error · {speed(t.rate)}"
            self.progress.update(self.task, completed=t.done, detail=detail)
        elif kind == "finished" and self.task is not None:
            self.progress.stop()

    def _start(self, total: int | None) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("images", total=total, completed=self.tally.done, detail="")


class JsonReporter:
    """Each event as one JSON line on ``stream`` (stdout): for schedulers and log pipelines."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def __call__(self, event: dict) -> None:
        print(json.dumps({"time": time.time(), **event}, default=str), file=self.stream, flush=True)


def reporter(fmt: str) -> Callable[[dict], None]:
    """``auto`` | ``rich`` | ``plain`` | ``json``."""
    if fmt == "auto":
        fmt = "rich" if sys.stdout.isatty() else "json"
    return {"rich": RichReporter, "plain": PlainReporter, "json": JsonReporter}[fmt]()
