"""The readiness rule: records waiting and a position that does not move for the window means stalled."""

from __future__ import annotations

from driftloop.bus.progress import ProgressWatch


def _watch() -> ProgressWatch[str]:
    watch: ProgressWatch[str] = ProgressWatch(stall_seconds=60)
    watch.assigned(["a", "b"], now=0)
    return watch


def test_a_partition_without_lag_is_idle_not_stalled_however_long_it_waits() -> None:
    watch = _watch()
    watch.observe("a", position=100, end=100, now=1)
    assert watch.stalled(now=10_000) == {}


def test_lag_that_does_not_move_for_the_window_is_stalled_with_its_size() -> None:
    watch = _watch()
    watch.observe("a", position=100, end=130, now=1)
    for now in (20, 40, 60):
        watch.observe("a", position=100, end=130, now=now)
    assert watch.stalled(now=61) == {}
    assert watch.stalled(now=62) == {"a": 30}
    assert watch.lag() == 30


def test_a_position_that_advances_restarts_the_window_even_while_lag_grows() -> None:
    watch = _watch()
    watch.observe("a", position=0, end=500, now=0)
    watch.observe("a", position=10, end=900, now=50)
    assert watch.stalled(now=100) == {}
    assert watch.stalled(now=111) == {"a": 890}


def test_going_back_to_the_last_commit_after_a_failure_is_not_progress() -> None:
    watch = _watch()
    watch.observe("a", position=40, end=80, now=0)
    watch.observe("a", position=40, end=80, now=30)
    watch.observe("a", position=40, end=80, now=59)
    assert watch.stalled(now=61) == {"a": 40}


def test_a_new_assignment_forgets_the_old_partitions_and_starts_their_window() -> None:
    watch = _watch()
    watch.observe("a", position=0, end=10, now=0)
    watch.assigned(["b"], now=100)
    watch.observe("b", position=0, end=10, now=100)
    assert watch.stalled(now=150) == {}
    assert watch.stalled(now=161) == {"b": 10}


def test_an_unknown_end_offset_is_not_taken_for_lag() -> None:
    watch = _watch()
    watch.observe("a", position=5, end=None, now=0)
    assert (watch.stalled(now=1_000), watch.lag()) == ({}, 0)
