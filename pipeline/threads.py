"""Choosing a CPU model actor's torch threads by measuring them on its own batches (no Ray here).

More threads than the CPUs an actor reserves pay off only while the cores are otherwise idle.
Measured on 2 cores with a compute-bound ×4 model next to its shard task (docs/benchmarks.md):
2 threads ran 1.18× faster than 1 on an idle machine, and 1.7× slower while other processes
kept about one core busy, because a thread that loses its core stalls the others at every
layer. Which is better is therefore only known at run time, and it changes with the load.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch


class ThreadTuner:
    """Keeps the fastest of a few torch thread counts, measured in rounds.

    A round runs each candidate for ``trial`` batches, then holds the one with the lowest mean
    seconds per input pixel. The mean, not the best batch: other work slows the larger count
    more often, and a lucky batch would hide that. The very first batch warms the model up
    (first calls are slow) and is not measured. With one candidate it only sets it.

    Trials cost throughput (a slower count runs ``trial`` batches), so the hold starts at
    ``hold`` batches and doubles, up to ``max_hold``, each time a round keeps the same count.
    Held batches are timed too: when the median of the last ``trial`` of them (so one odd batch
    does not count) moves more than ``drift`` (a fraction) from the winner's trial mean, the
    machine's load has changed, and a new round starts at once with the hold back at ``hold``.

    Call :meth:`start` before each batch and :meth:`done` after it.
    """

    def __init__(
        self,
        candidates: Sequence[int],
        trial: int = 3,
        hold: int = 50,
        max_hold: int = 800,
        drift: float = 0.3,
        set_threads: Callable[[int], None] = torch.set_num_threads,
    ):
        self.candidates = list(dict.fromkeys(candidates))
        self.trial, self.hold, self.max_hold, self.drift = trial, hold, max_hold, drift
        self._set = set_threads
        self._queue: list[tuple[int, bool]] = [(self.candidates[0], False)]  # (threads, trial batch?)
        self._seen: dict[int, list[float]] = {}  # this round's seconds per pixel, per thread count
        self._current: tuple[int, bool] = self._queue[0]
        self.chosen = self.candidates[0]  # the last round's winner
        self.holding = 0  # length of the current hold; 0 before the first round ends
        self._reference: float | None = None  # the winner's trial mean, s/pixel
        self._held: list[float] = []  # the current hold's last `trial` batches, s/pixel

    def start(self) -> int:
        """Apply (and return) the thread count of the next batch."""
        if not self._queue:
            self._refill()
        self._current = self._queue.pop(0)
        self._set(self._current[0])
        return self._current[0]

    def done(self, seconds: float, pixels: int) -> None:
        """The batch started last took ``seconds`` for ``pixels`` input pixels."""
        threads, trial = self._current
        if pixels <= 0:
            return
        if trial:
            self._seen.setdefault(threads, []).append(seconds / pixels)
        elif self._reference is not None:
            self._held = (self._held + [seconds / pixels])[-self.trial :]
            if len(self._held) == self.trial and abs(statistics.median(self._held) / self._reference - 1) > self.drift:
                self._queue, self._reference = [], None  # measure again now, from the shortest hold

    def _refill(self) -> None:
        if len(self.candidates) == 1:
            self._queue = [(self.candidates[0], False)] * self.hold
        elif len(self._seen) == len(self.candidates):
            means = {n: sum(t) / len(t) for n, t in self._seen.items()}
            winner = min(means, key=means.get)
            kept = winner == self.chosen and self._reference is not None
            self.holding = min(2 * self.holding, self.max_hold) if kept else self.hold
            self.chosen, self._reference, self._held, self._seen = winner, means[winner], [], {}
            self._queue = [(winner, False)] * self.holding
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
