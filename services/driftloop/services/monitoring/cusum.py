"""A one-sided Bernoulli CUSUM on a model's error stream: Page's test for a rise of the error rate.

Each labelled outcome is an error or not. Against a reference error rate
``p0`` and the rate ``p1 = p0 + rise`` that is worth a retrain, the statistic

    S = max(0, S + log(p1 / p0))                 after an error,
    S = max(0, S + log((1 - p1) / (1 - p0)))     after a right answer,

is the log-likelihood ratio of "the rate has been ``p1`` since S last left
zero" against "it is still ``p0``", the largest over every possible change
point; the detector fires when it reaches the threshold ``h``. Among
detectors with the same rate of false alarms it is the one that finds a
change to ``p1`` soonest in the worst case (Lorden, Moustakides), it needs
no window, and its whole state is a handful of numbers.

It is one-sided: a right answer only pulls S down, so a model that got
better never fires it, however much better.

The rise is additive: ``p1`` is ``rise`` above ``p0`` whatever ``p0`` is,
because what a retrain is for is points of accuracy, the unit of the gate
and of the recovery target. A multiplicative rise would tune a model that is
almost always right (0.5 % errors) to a rise of half a point, and a noisy
one (30 %) to a rise of thirty.

``p0`` comes from the version's own first outcomes: detection starts after
``grace`` of them, and the estimate keeps taking outcomes until it has
``policy.reference`` (or up to a run's length more, below), so a large rise
is found early and a small one against a narrow reference. Once detection
has started, outcomes join the reference only when the statistic is back at
zero: a run that ended there was the stationary stream's noise, while the
run under way may be the change itself, and taking it in would lift the
reference towards the new rate and hide it. So the design changes only while
the statistic is zero.

The estimate is taken ``reference_se`` standard errors high (Agresti–Coull:
add ``z²/2`` errors and as many right answers, then the upper bound),
because a reference below the true rate makes the stationary stream itself
look like a rise: 200 outcomes at 14 % errors leave the rate 2.5 points
uncertain, half the default rise. The pseudo-counts also keep ``p0`` above
zero for a model that has not been wrong yet, where the log-likelihood ratio
of an error would be infinite.

``h`` is the smallest threshold whose in-control average run length (the
mean number of outcomes to a false alarm at ``p0``) reaches ``policy.arl``,
by Siegmund's approximation for a random walk with a reflecting barrier at
zero (*Sequential Analysis*, 1985): for steps of mean ``μ`` and standard
deviation ``σ``,

    ARL ≈ (exp(θ b) − θ b − 1) / (−θ μ),   b = h + 2 · 0.583 σ,

with ``θ ≠ 0`` the root of ``E exp(θ Z) = 1`` (the steps' exponential tilt)
and 0.583 σ the expected overshoot of each boundary. At ``p0`` the steps are
log-likelihood ratios, whose exponentials average one: ``θ = 1``. The more
familiar Brownian form puts ``θ = −2μ/σ²``, which is right for normal steps
but not for these skewed ones: for ``p0 = 0.145`` and a rise of 0.07 it gives
a threshold whose ARL is a quarter of 10⁸, and for ``p0 = 0.0015`` and 0.05
one of 650 outcomes. The tests check the approximation against simulation:
at a small ``p0`` the real ARL is longer than the target (an error is a step
far larger than the overshoot allows for), which costs a little speed and
never a false alarm.

>>> from driftloop.config import CusumPolicy
>>> import random
>>> rng = random.Random(0)
>>> cusum = BernoulliCusum(CusumPolicy(arl=1e6, rise=0.1, reference=500), grace=200)
>>> alarms = [i for i in range(3000) if cusum.update(rng.random() < (0.05 if i < 2000 else 0.3), float(i))]
>>> 2000 <= alarms[0] < 2100
True
>>> cusum.run_start is not None and 1950 < cusum.run_start <= alarms[0]
True

The state is plain JSON and a detector read back from it is the same detector:

>>> again = BernoulliCusum.from_dict(cusum.to_dict(), cusum.policy, grace=200)
>>> (again.statistic, again.design) == (cusum.statistic, cusum.design)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from driftloop.config import CusumPolicy

#: Siegmund's expected overshoot of a boundary by a random walk, in standard deviations of a step.
OVERSHOOT = 0.583
#: The highest reference error rate used: a model wrong nearly always leaves no room above it.
MAX_REFERENCE = 0.99


def steps(p0: float, p1: float) -> tuple[float, float]:
    """The statistic's step after an error and after a right answer: the log-likelihood ratio of ``p1`` to ``p0``.

    >>> [round(s, 4) for s in steps(0.1, 0.2)]
    [0.6931, -0.1178]
    """
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


def tilt(rate: float, up: float, down: float) -> float:
    """The ``θ ≠ 0`` with ``rate·exp(θ·up) + (1 − rate)·exp(θ·down) = 1``: positive when the walk drifts down.

    The left side is convex in ``θ`` and one at zero, with slope the steps'
    mean there, so the other root lies on the side the mean points away
    from; it is bracketed by doubling and halved to machine precision.

    >>> round(tilt(0.1, *steps(0.1, 0.2)), 9)
    1.0
    """
    mean = rate * up + (1 - rate) * down

    def excess(theta: float) -> float:
        return rate * math.exp(theta * up) + (1 - rate) * math.exp(theta * down) - 1

    sign = 1.0 if mean < 0 else -1.0
    near, far = 0.0, sign
    while excess(far) < 0:
        near, far = far, 2 * far
    for _ in range(200):
        middle = (near + far) / 2
        if middle in (near, far):
            break
        near, far = (middle, far) if excess(middle) < 0 else (near, middle)
    return far


def average_run_length(threshold: float, p0: float, p1: float, rate: float | None = None) -> float:
    """Siegmund's approximation of the mean outcomes from ``S = 0`` to an alarm when the error rate is ``rate``.

    ``rate`` defaults to ``p0``: the in-control run length, the mean time
    between false alarms. Above the break-even rate the walk drifts up and
    the same formula gives the mean detection delay.

    >>> round(average_run_length(5.0, 0.15, 0.22), -2)
    11200.0
    """
    up, down = steps(p0, p1)
    at = p0 if rate is None else rate
    mean = at * up + (1 - at) * down
    deviation = math.sqrt(at * (1 - at)) * (up - down)
    bound = threshold + 2 * OVERSHOOT * deviation
    if abs(mean) < 1e-12 * deviation:
        return (bound / deviation) ** 2
    theta = 1.0 if rate is None else tilt(at, up, down)
    x = theta * bound
    if x > 700:
        return math.inf
    return (math.expm1(x) - x) / (-theta * mean)


def threshold_for(p0: float, p1: float, arl: float) -> float:
    """The smallest threshold whose in-control average run length reaches ``arl`` (to 1e-9).

    >>> h = threshold_for(0.15, 0.22, 1e8)
    >>> round(h, 2), average_run_length(h, 0.15, 0.22) >= 1e8
    (14.07, True)
    """
    low, high = 0.0, 1.0
    while average_run_length(high, p0, p1) < arl:
        low, high = high, 2 * high
    while high - low > 1e-9:
        middle = (low + high) / 2
        low, high = (middle, high) if average_run_length(middle, p0, p1) < arl else (low, middle)
    return high


@dataclass(frozen=True)
class CusumDesign:
    """What the detector tests for, made from ``errors`` in ``outcomes`` reference outcomes."""

    #: The reference rate as estimated (errors / outcomes) and as used: ``reference_se`` standard errors higher.
    estimate: float
    p0: float
    p1: float
    threshold: float

    @classmethod
    def of(cls, errors: int, outcomes: int, policy: CusumPolicy) -> CusumDesign:
        """p0 the Agresti–Coull upper bound at ``reference_se``; p1 ``rise`` above it (halfway to one at most).

        >>> design = CusumDesign.of(0, 2000, CusumPolicy())
        >>> round(design.p0, 4), round(design.p1, 4), design.estimate
        (0.0024, 0.0524, 0.0)
        """
        z2 = policy.reference_se**2
        shrunk = (errors + z2 / 2) / (outcomes + z2)
        upper = shrunk + policy.reference_se * math.sqrt(shrunk * (1 - shrunk) / (outcomes + z2))
        p0 = min(upper, MAX_REFERENCE)
        p1 = min(p0 + policy.rise, (1 + p0) / 2)
        return cls(errors / outcomes, p0, p1, threshold_for(p0, p1, policy.arl))

    @property
    def steps(self) -> tuple[float, float]:
        return steps(self.p0, self.p1)


@dataclass
class BernoulliCusum:
    """The statistic, the reference it is measured against and the run since it last left zero.

    ``at`` in ``update`` is whatever locates an outcome (monitoring passes
    its event time): the run's first ``at`` is the change point, Page's
    maximum-likelihood estimate of where the rise began.
    """

    policy: CusumPolicy
    #: Reference outcomes needed before the detector looks at all.
    grace: int
    seen: int = 0
    reference_errors: int = 0
    reference_outcomes: int = 0
    statistic: float = 0.0
    run_outcomes: int = 0
    run_errors: int = 0
    run_start: float | None = None
    design: CusumDesign | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.design = self._designed()

    def _designed(self) -> CusumDesign | None:
        if self.reference_outcomes < min(self.grace, self.policy.reference):
            return None
        return CusumDesign.of(self.reference_errors, self.reference_outcomes, self.policy)

    @property
    def alarm(self) -> bool:
        return self.design is not None and self.statistic >= self.design.threshold

    @property
    def change_index(self) -> int | None:
        """Outcomes before the run under way, where the statistic last left zero: the change point as an index."""
        return self.seen - self.run_outcomes if self.run_outcomes else None

    def update(self, error: bool, at: float) -> bool:
        """Fold one outcome in; True while the alarm holds."""
        self.seen += 1
        if self.design is None:
            self._learn(1, int(error))
            return False
        up, down = self.design.steps
        moved = self.statistic + (up if error else down)
        if moved > 0:
            if self.run_outcomes == 0:
                self.run_start = at
            self.statistic = moved
            self.run_outcomes += 1
            self.run_errors += int(error)
            return self.alarm
        self._learn(self.run_outcomes + 1, self.run_errors + int(error))
        self.statistic, self.run_outcomes, self.run_errors, self.run_start = 0.0, 0, 0, None
        return False

    def _learn(self, outcomes: int, errors: int) -> None:
        """Outcomes of the stationary stream join the reference until it has ``policy.reference``."""
        if self.reference_outcomes >= self.policy.reference:
            return
        self.reference_outcomes += outcomes
        self.reference_errors += errors
        self.design = self._designed()

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "reference": [self.reference_errors, self.reference_outcomes],
            "statistic": self.statistic,
            "run": [self.run_outcomes, self.run_errors],
            "run_start": self.run_start,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], policy: CusumPolicy, *, grace: int) -> BernoulliCusum:
        return cls(
            policy,
            grace,
            seen=int(data["seen"]),
            reference_errors=int(data["reference"][0]),
            reference_outcomes=int(data["reference"][1]),
            statistic=float(data["statistic"]),
            run_outcomes=int(data["run"][0]),
            run_errors=int(data["run"][1]),
            run_start=data["run_start"],
        )
