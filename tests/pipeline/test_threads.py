"""The thread tuner of CPU model actors: which thread counts it runs, and which it keeps."""

from __future__ import annotations

from pipeline.threads import ThreadTuner


def run(tuner: ThreadTuner, batches: int, seconds_per_pixel: dict[int, float], pixels: int = 1000) -> list[int]:
    """Thread counts of ``batches`` batches, each taking seconds_per_pixel[threads] × pixels."""
    used = []
    for _ in range(batches):
        threads = tuner.start()
        used.append(threads)
        tuner.done(seconds_per_pixel[threads] * pixels, pixels)
    return used


def test_keeps_the_faster_count_and_measures_again_after_hold():
    applied: list[int] = []
    tuner = ThreadTuner([2, 1], trial=2, hold=3, set_threads=applied.append)
    # Idle cores: 2 threads are faster. Warm-up (2), trials 2, 2, 1, 1, then 2 held.
    assert run(tuner, 8, {2: 1.0, 1: 1.6}) == [2, 2, 2, 1, 1, 2, 2, 2]
    assert tuner.chosen == 2 and applied == [2, 2, 2, 1, 1, 2, 2, 2]
    # Other work arrives and 2 threads become slower: the next round picks 1.
    assert run(tuner, 7, {2: 3.0, 1: 1.7}) == [2, 2, 1, 1, 1, 1, 1]
    assert tuner.chosen == 1


def test_the_warm_up_batch_is_not_counted():
    tuner = ThreadTuner([2, 1], trial=1, hold=2, set_threads=lambda n: None)
    tuner.start()
    tuner.done(100.0, 10)  # a slow first call (model warm-up) with 2 threads
    assert run(tuner, 4, {2: 1.0, 1: 1.5}) == [2, 1, 2, 2]


def test_one_candidate_is_only_applied():
    applied: list[int] = []
    tuner = ThreadTuner([1, 1], set_threads=applied.append)
    assert run(tuner, 5, {1: 1.0}) == [1] * 5 and set(applied) == {1}


def test_the_mean_decides_not_the_luckiest_batch():
    # Under load 2 threads are usually slow and now and then fast; 1 thread is steady.
    timings = iter([5.0, 1.0, 5.0, 2.0, 2.0, 2.0])  # trials: 2, 2, 2, then 1, 1, 1
    tuner = ThreadTuner([2, 1], trial=3, hold=2, set_threads=lambda n: None)
    tuner.start()
    tuner.done(1.0, 1)  # warm-up
    for _ in range(6):
        tuner.start()
        tuner.done(next(timings), 1)
    assert tuner.start() == 1 and tuner.chosen == 1


def test_actor_threads_sets_the_count_and_measures_it_against_the_reservation():
    import torch

    from pipeline.threads import actor_threads

    before = torch.get_num_threads()
    try:
        assert actor_threads(2, 1, want_gpu=False).candidates == [2, 1] and torch.get_num_threads() == 2
        assert actor_threads(3, 1, want_gpu=True).candidates == [3] and torch.get_num_threads() == 3
        assert actor_threads(None, 1, want_gpu=False).candidates == [1] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_hold_doubles_while_the_same_count_wins():
    tuner = ThreadTuner([2, 1], trial=1, hold=2, max_hold=8, set_threads=lambda n: None)
    used = run(tuner, 1 + 2 + 2 + 2 + 4 + 2 + 8 + 2 + 8, {2: 1.0, 1: 1.5})
    trials = [i for i, n in enumerate(used) if n == 1]
    # warm-up, then rounds (2, 1) separated by holds of 2, 4, 8, 8 batches at 2 threads
    assert [b - a for a, b in zip(trials, trials[1:])] == [2 + 2, 4 + 2, 8 + 2]
    assert tuner.holding == 8


def test_a_load_change_during_the_hold_starts_a_round_at_once():
    tuner = ThreadTuner([2, 1], trial=3, hold=50, set_threads=lambda n: None)
    assert run(tuner, 11, {2: 1.0, 1: 1.6}) == [2, 2, 2, 2, 1, 1, 1] + [2] * 4
    # Other work arrives: the held 2-thread batches take 3× as long. Two of them show it (the
    # median of the last three); a round follows at once instead of after the hold's other 44.
    assert run(tuner, 10, {2: 3.0, 1: 1.7}) == [2, 2, 2, 2, 2, 1, 1, 1, 1, 1]
    assert tuner.chosen == 1 and tuner.holding == 50


def test_one_odd_batch_does_not_end_the_hold():
    tuner = ThreadTuner([2, 1], trial=3, hold=50, set_threads=lambda n: None)
    run(tuner, 11, {2: 1.0, 1: 1.6})
    assert run(tuner, 1, {2: 4.0}) == [2]  # a pause, say
    assert run(tuner, 20, {2: 1.0, 1: 1.6}) == [2] * 20


def test_a_steady_hold_is_not_cut_short():
    tuner = ThreadTuner([2, 1], trial=2, hold=20, set_threads=lambda n: None)
    timings = {2: 1.0, 1: 1.6}
    used = run(tuner, 5 + 20, timings)
    assert used[5:] == [2] * 20  # ±10 % jitter would stay under the 30 % drift; none here
