"""Choosing a CPU model actor's torch threads by measuring them on its own batches (no Ray here).

More threads than the CPUs an actor reserves pay off only while the cores are otherwise idle.
Measured on 2 cores with a compute-bound ×4 model next to its shard task (docs/benchmarks.md):
2 threads ran 1.18× faster than 1 on an idle machine, and 1.7× slower while other processes
kept about one core busy, because a thread that loses its core stalls the others at every
layer. Which is better is therefore only known at run time, and it changes with the load.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


class ThreadTuner:
    """Keeps the fastest of a few torch thread counts, measured in rounds.

    A round runs each candidate for ``trial`` batches, then the one with the lowest mean
    seconds per input pixel for ``hold`` batches. The mean, not the best batch: other work
    slows the larger count more often, and a lucky batch would hide that. The very first batch
    warms the model up (first calls are slow) and is not measured. With one candidate it only
    sets it.

    Call :meth:`start` before each batch and :meth:`done` after it.
    """

    def __init__(
        self,
        candidates: Sequence[int],
        trial: int = 3,
        hold: int = 50,
        set_threads: Callable[[int], None] = torch.set_num_threads,
    ):
        self.candidates = list(dict.fromkeys(candidates))
        self.trial, self.hold = trial, hold
        self._set = set_threads
        self._queue: list[tuple[int, bool]] = [(self.candidates[0], False)]  # (threads, measured?)
        self._seen: dict[int, list[float]] = {}  # this round's seconds per pixel, per thread count
        self._current: tuple[int, bool] = self._queue[0]
        self.chosen = self.candidates[0]  # the last round's winner

    def start(self) -> int:
        """Apply (and return) the thread count of the next batch."""
        if not self._queue:
            self._refill()
        self._current = self._queue.pop(0)
        self._set(self._current[0])
        return self._current[0]

    def done(self, seconds: float, pixels: int) -> None:
        """The batch started last took ``seconds`` for ``pixels`` input pixels."""
        threads, measured = self._current
        if measured and pixels > 0:
            self._seen.setdefault(threads, []).append(seconds / pixels)

    def _refill(self) -> None:
        if len(self.candidates) == 1:
            self._queue = [(self.candidates[0], False)] * self.hold
        elif len(self._seen) == len(self.candidates):
            self.chosen = min(self._seen, key=lambda n: sum(self._seen[n]) / len(self._seen[n]))
            self._seen = {}
            self._queue = [(self.chosen, False)] * self.hold
        else:
            self._queue = [(c, True) for c in self.candidates for _ in range(self.trial)]


def actor_threads(threads_per_actor: int | None, cpus_per_actor: float, want_gpu: bool) -> ThreadTuner:
    """Set a model actor's torch threads (``threads_per_actor``, default ``cpus_per_actor``) and
    return its tuner: on CPU, threads beyond the reserved CPUs (``cpus_per_actor`` rounded up) are
    kept only while they measure faster; a GPU actor keeps its count."""
    threads = threads_per_actor or max(1, int(cpus_per_actor))
    torch.set_num_threads(threads)
    reserved = max(1, math.ceil(cpus_per_actor))
    return ThreadTuner([threads] if want_gpu else [threads, min(threads, reserved)])
