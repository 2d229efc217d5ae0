"""When ``driftloop up`` restarts a service that exited, and how it reports one that keeps crashing.

Pure: the caller passes the clock (``time.monotonic()``), so the rule is
tested without waiting. A child that exits is restarted after a back-off that
doubles with each exit in a row (1 s, 2 s, 4 s … up to a cap), so a service
that cannot start does not spin the machine, and one that crashed once is back
at once. A run that lasted ``stable_seconds`` wipes the slate: the next crash
counts as the first again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    initial_seconds: float = 1.0
    max_seconds: float = 30.0
    #: A run this long counts as healthy: the back-off starts over at the next exit.
    stable_seconds: float = 60.0
    #: Exits in a row (without a healthy run between) from which the child is shown as crash-looping.
    crash_loop_after: int = 3

    def delay(self, failures: int) -> float:
        """Back-off before restarting after the ``failures``-th exit in a row.

        >>> [RestartPolicy().delay(n) for n in (1, 2, 3, 6, 7)]
        [1.0, 2.0, 4.0, 30.0, 30.0]
        """
        return min(self.max_seconds, self.initial_seconds * 2.0 ** (failures - 1))


@dataclass
class Supervision:
    """One child's restart record."""

    started_at: float
    #: Restarts done since ``driftloop up`` began.
    restarts: int = 0
    #: Exits in a row, none separated by a healthy run.
    failures: int = 0
    last_exit: int | None = None
    restart_at: float | None = None

    def exited(self, code: int, now: float, policy: RestartPolicy) -> float:
        """Note an exit; returns when to restart the child."""
        if now - self.started_at >= policy.stable_seconds:
            self.failures = 0
        self.failures += 1
        self.last_exit = code
        self.restart_at = now + policy.delay(self.failures)
        return self.restart_at

    def due(self, now: float) -> bool:
        return self.restart_at is not None and now >= self.restart_at

    def restarted(self, now: float) -> None:
        self.restarts += 1
        self.restart_at = None
        self.started_at = now

    def crash_looping(self, policy: RestartPolicy) -> bool:
        return self.failures >= policy.crash_loop_after

    def describe(self, now: float, policy: RestartPolicy) -> str:
        """The state of a child waiting to be restarted, as the status table shows it.

        >>> s = Supervision(started_at=0.0)
        >>> s.exited(-9, now=100.0, policy=RestartPolicy())
        101.0
        >>> s.describe(100.2, RestartPolicy())
        'exited (-9), restarting in 0.8s'
        >>> for t in (101.0, 102.0, 104.0):
        ...     s.restarted(t); _ = s.exited(1, t + 1, RestartPolicy())
        >>> s.describe(106.0, RestartPolicy()), s.restarts
        ('crash-looping: exited (1) 4 times in a row, restarting in 7.0s', 3)
        """
        wait = max(0.0, (self.restart_at or now) - now)
        if self.crash_looping(policy):
            return f"crash-looping: exited ({self.last_exit}) {self.failures} times in a row, restarting in {wait:.1f}s"
        return f"exited ({self.last_exit}), restarting in {wait:.1f}s"
