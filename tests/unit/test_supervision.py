"""When ``driftloop up`` restarts a child that exited, and what its status table says meanwhile."""

from __future__ import annotations

from driftloop.cli.supervision import RestartPolicy, Supervision

POLICY = RestartPolicy(initial_seconds=1.0, max_seconds=8.0, stable_seconds=60.0, crash_loop_after=3)


def _crash(supervision: Supervision, at: float, code: int = 1) -> float:
    """The child exits at ``at``; it is restarted as soon as its back-off allows. Returns the restart time."""
    restart_at = supervision.exited(code, at, POLICY)
    assert not supervision.due(restart_at - 0.01) and supervision.due(restart_at)
    supervision.restarted(restart_at)
    return restart_at


def test_back_off_doubles_with_each_exit_in_a_row_up_to_the_cap() -> None:
    supervision = Supervision(started_at=0.0)
    waits = []
    at = 10.0
    for _ in range(6):
        restarted = _crash(supervision, at)
        waits.append(restarted - at)
        at = restarted + 2.0
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert (supervision.restarts, supervision.failures) == (6, 6)


def test_a_run_that_lasted_starts_the_back_off_over() -> None:
    supervision = Supervision(started_at=0.0)
    restarted = _crash(supervision, 5.0)
    restarted = _crash(supervision, restarted + 1.0)
    assert supervision.failures == 2
    after_a_good_run = supervision.exited(-9, restarted + 61.0, POLICY)
    assert after_a_good_run - (restarted + 61.0) == 1.0
    assert (supervision.failures, supervision.restarts) == (1, 2)


def test_a_child_killed_once_is_not_crash_looping() -> None:
    supervision = Supervision(started_at=0.0)
    supervision.exited(-9, 100.0, POLICY)
    assert not supervision.crash_looping(POLICY)
    assert supervision.describe(100.0, POLICY) == "exited (-9), restarting in 1.0s"


def test_a_child_that_keeps_crashing_is_shown_as_crash_looping() -> None:
    supervision = Supervision(started_at=0.0)
    at = 0.5
    for _ in range(2):
        at = _crash(supervision, at, code=3) + 0.5
    supervision.exited(3, at, POLICY)
    assert supervision.crash_looping(POLICY)
    assert supervision.describe(at + 1.0, POLICY) == "crash-looping: exited (3) 3 times in a row, restarting in 3.0s"
    assert supervision.restarts == 2
