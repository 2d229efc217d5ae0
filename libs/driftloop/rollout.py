"""Staged rollouts with no I/O: the traffic split, the online verdict and the plan that steps through them.

Deployment routes by the split and serves the plan's current share;
monitoring counts labelled outcomes of both sides, asks the verdict and steps
the plan. Both read this module, so it lives beside the config it follows.

**The split** hashes ``entity_id`` with SHA-256 (Python's ``hash`` is salted
per process) to a share in [0, 1); an entity goes to the challenger when its
share is below the percent. Every replica routes an entity alike, and an
entity on the challenger at 5 % is still there at 25 %, so a canary's early
users are never moved back and forth between versions.

**The verdict** is a confidence sequence for the difference of the two error
rates, ``challenger - champion``: an interval that holds the true difference
at every moment of the rollout at once with probability ``1 - alpha``, so it
may be looked at after every outcome without the false alarms that repeated
fixed-sample tests accumulate. It is the mixture sequential probability ratio
test (mSPRT) of Johari, Koomen, Pekelis and Walsh, "Always Valid Inference:
Continuous Monitoring of A/B Tests", Operations Research 70(3):1806-1821
(2022), with their normal approximation for two binomial streams, inverted
into an interval: with ``V`` the variance of the estimated difference and a
normal mixing distribution of scale ``tau``, the test of a difference ``d``
rejects once

    |estimate - d| >= sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))

(Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central
limit theory and asymptotic confidence sequences", Annals of Statistics 2024,
give the asymptotic validity of such a sequence with the variance estimated).
``tau`` is the margin: the test is tuned to resolve differences of the size
that matters. ``V`` is computed from the two arms' counts, so unequal shares
(5 % against 95 %) are handled as they are.

The rollout aborts when the interval lies above zero (the challenger is shown
worse: the margin bounds what the test cannot rule out, not what it may
prove), and the verdict advances when the interval lies below the margin (the
challenger is shown no worse than the margin). With equal error rates an abort
happens in at most ``alpha`` of rollouts, and a challenger worse by the margin
is passed in at most ``alpha`` of them. A canary stage ends on its time and
outcomes unless the verdict is against; an A/B test ends at its budget with a
fixed-sample one-sided test of non-inferiority at level ``alpha``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any, Literal

from driftloop.config import RolloutPolicy, RolloutStrategyName

#: Outcomes each side needs before the error rates are compared: below it the normal approximation is poor.
MIN_OUTCOMES_TO_JUDGE = 30

Decision = Literal["continue", "advance", "abort"]
Status = Literal["running", "completed", "aborted"]
Transition = Literal["none", "stepped", "completed", "aborted"]


def share_of(entity_id: str, salt: str = "") -> float:
    """Where an entity falls in [0, 1), the same in every process; ``salt`` draws a new order per rollout.

    >>> share_of("customer-42") == share_of("customer-42")
    True
    >>> 0 <= share_of("customer-42") < 1
    True
    """
    digest = hashlib.sha256(f"{salt}\x00{entity_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_salt(model_name: str, version: int) -> str:
    """The split's salt: every rollout draws its own order of entities, fixed for all its stages."""
    return f"{model_name}:{version}"


def routes_to_challenger(entity_id: str, percent: float, salt: str = "") -> bool:
    """Whether the challenger serves this entity while it has ``percent`` of the traffic.

    >>> routes_to_challenger("customer-42", 0), routes_to_challenger("customer-42", 100)
    (False, True)
    """
    return share_of(entity_id, salt) * 100 < percent


@dataclass(frozen=True)
class Arm:
    """Labelled outcomes of one side and how many of them were wrong."""

    outcomes: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.errors <= self.outcomes:
            raise ValueError(f"errors must be between 0 and outcomes, got {self.errors} of {self.outcomes}")

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.outcomes if self.outcomes else None

    def add(self, wrong: bool) -> Arm:
        return Arm(self.outcomes + 1, self.errors + int(wrong))

    def since(self, earlier: Arm) -> Arm:
        return Arm(self.outcomes - earlier.outcomes, self.errors - earlier.errors)

    def variance(self) -> float:
        """Of the error rate's estimate; counted with one error and one success more, so no errors is not certainty."""
        rate = (self.errors + 1) / (self.outcomes + 2)
        return rate * (1 - rate) / self.outcomes


@dataclass(frozen=True)
class Tally:
    """Both sides' labelled outcomes since the rollout began, on the same period."""

    challenger: Arm = Arm()
    champion: Arm = Arm()

    def since(self, earlier: Tally) -> Tally:
        return Tally(self.challenger.since(earlier.challenger), self.champion.since(earlier.champion))

    def to_dict(self) -> dict[str, int]:
        return {
            "challenger_outcomes": self.challenger.outcomes,
            "challenger_errors": self.challenger.errors,
            "champion_outcomes": self.champion.outcomes,
            "champion_errors": self.champion.errors,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        return cls(
            Arm(int(data["challenger_outcomes"]), int(data["challenger_errors"])),
            Arm(int(data["champion_outcomes"]), int(data["champion_errors"])),
        )


def radius(variance: float, alpha: float, tau: float) -> float:
    """Half-width of the always-valid interval around an estimate of this variance (mSPRT inverted).

    >>> round(radius(0.0005, 0.05, 0.02), 4)
    0.086
    """
    spread = variance + tau**2
    return math.sqrt(variance * spread / tau**2 * (2 * math.log(1 / alpha) + math.log(spread / variance)))


@dataclass(frozen=True)
class Verdict:
    """What the online comparison says now, with every number it rests on."""

    decision: Decision
    reason: str
    tally: Tally
    margin: float
    alpha: float
    difference: float | None = None
    radius: float | None = None
    p99_ms: float | None = None

    @property
    def lower(self) -> float | None:
        return None if self.difference is None or self.radius is None else self.difference - self.radius

    @property
    def upper(self) -> float | None:
        return None if self.difference is None or self.radius is None else self.difference + self.radius

    def evidence(self) -> dict[str, float]:
        """The numbers as an event carries them; those not known yet are left out."""
        numbers: dict[str, float | None] = {
            **self.tally.to_dict(),
            "challenger_error_rate": self.tally.challenger.error_rate,
            "champion_error_rate": self.tally.champion.error_rate,
            "difference": self.difference,
            "radius": self.radius,
            "lower": self.lower,
            "upper": self.upper,
            "margin": self.margin,
            "alpha": self.alpha,
            "p99_ms": self.p99_ms,
        }
        return {k: float(v) for k, v in numbers.items() if v is not None}


def judge(tally: Tally, policy: RolloutPolicy, p99_ms: float | None = None) -> Verdict:
    """Continue, advance or abort on the labelled outcomes of both sides and the challenger's latency.

    >>> from driftloop.config import RolloutPolicy
    >>> judge(Tally(Arm(600, 180), Arm(600, 60)), RolloutPolicy()).decision
    'abort'
    >>> judge(Tally(Arm(20, 0), Arm(20, 0)), RolloutPolicy(max_p99_ms=100), p99_ms=250).reason
    'p99 latency 250 ms over the ceiling of 100 ms'
    """
    base = Verdict("continue", "", tally, policy.margin, policy.alpha, p99_ms=p99_ms)
    if policy.max_p99_ms is not None and p99_ms is not None and p99_ms > policy.max_p99_ms:
        return replace(
            base, decision="abort", reason=f"p99 latency {p99_ms:g} ms over the ceiling of {policy.max_p99_ms:g} ms"
        )
    challenger, champion = tally.challenger, tally.champion
    if min(challenger.outcomes, champion.outcomes) < MIN_OUTCOMES_TO_JUDGE:
        return replace(base, reason=f"fewer than {MIN_OUTCOMES_TO_JUDGE} labelled outcomes on a side")
    challenger_rate, champion_rate = challenger.errors / challenger.outcomes, champion.errors / champion.outcomes
    if policy.max_error_rate is not None:
        own = challenger_rate - radius(challenger.variance(), policy.alpha, policy.margin)
        if own > policy.max_error_rate:
            return replace(
                base,
                decision="abort",
                reason=f"challenger's error rate at least {own:.4f}, over the ceiling of {policy.max_error_rate:g}",
            )
    difference = challenger_rate - champion_rate
    half = radius(challenger.variance() + champion.variance(), policy.alpha, policy.margin)
    judged = replace(base, difference=difference, radius=half)
    if difference - half > 0:
        return replace(
            judged, decision="abort", reason=f"challenger's error rate is higher by at least {difference - half:.4f}"
        )
    if difference + half < policy.margin:
        return replace(
            judged, decision="advance", reason=f"challenger's error rate is higher by at most {difference + half:.4f}"
        )
    return replace(judged, reason="not decided yet")


def non_inferior_at_budget(tally: Tally, policy: RolloutPolicy) -> Verdict:
    """The A/B test's end: a one-sided z-test, at level ``alpha``, that the difference is below the margin.

    Its budget is fixed in advance and looked at once, so the fixed-sample test
    applies and has more power than the always-valid interval.
    """
    challenger, champion = tally.challenger, tally.champion
    if challenger.error_rate is None or champion.error_rate is None:
        return Verdict("abort", "a side has no labelled outcomes", tally, policy.margin, policy.alpha)
    difference = challenger.error_rate - champion.error_rate
    bound = NormalDist().inv_cdf(1 - policy.alpha) * math.sqrt(challenger.variance() + champion.variance())
    verdict = Verdict("advance", "", tally, policy.margin, policy.alpha, difference=difference, radius=bound)
    if difference + bound < policy.margin:
        return replace(verdict, reason=f"challenger's error rate is higher by at most {difference + bound:.4f}")
    return replace(
        verdict, decision="abort", reason=f"not shown within the margin: higher by up to {difference + bound:.4f}"
    )


@dataclass(frozen=True)
class Stage:
    """One stage: the challenger's share of served traffic and what ends it.

    ``percent`` 0 is a shadow (the challenger scores everything, serves
    nothing); 100 with ``shadowed`` is the blue-green watch (the old version
    scores everything beside it, ready to be switched back to). A ``budget``
    ends the stage by the fixed-sample test once both sides together have that
    many outcomes.
    """

    percent: float
    min_duration: timedelta
    min_outcomes: int
    shadowed: bool = False
    budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "percent": self.percent,
            "min_duration_seconds": self.min_duration.total_seconds(),
            "min_outcomes": self.min_outcomes,
            "shadowed": self.shadowed,
            "budget": self.budget,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage:
        return cls(
            percent=float(data["percent"]),
            min_duration=timedelta(seconds=float(data["min_duration_seconds"])),
            min_outcomes=int(data["min_outcomes"]),
            shadowed=bool(data["shadowed"]),
            budget=None if data["budget"] is None else int(data["budget"]),
        )


def stages(policy: RolloutPolicy) -> tuple[Stage, ...]:
    """The stages a strategy walks through before the challenger has all traffic; none for ``direct``."""
    if policy.strategy == "direct":
        return ()
    if policy.strategy == "canary":
        return tuple(
            Stage(
                step.percent,
                policy.min_duration if step.min_duration is None else step.min_duration,
                policy.min_outcomes if step.min_outcomes is None else step.min_outcomes,
            )
            for step in policy.steps
            if step.percent < 100
        )
    if policy.strategy == "ab":
        return (Stage(policy.split, policy.min_duration, policy.min_outcomes, budget=policy.budget),)
    percent = 0.0 if policy.strategy == "shadow" else 100.0
    return (Stage(percent, policy.min_duration, policy.min_outcomes, shadowed=True),)


@dataclass(frozen=True)
class RolloutPlan:
    """One rollout's state: where it stands, and the tally when its stage began.

    Kept as JSON (``to_dict``/``from_dict``) so a stream table can hold it
    and a restarted worker picks it up where it was.
    """

    model_name: str
    version: int
    champion_version: int | None
    strategy: RolloutStrategyName
    correlation_id: str
    stages: tuple[Stage, ...]
    started_at: datetime
    stage: int = 0
    stage_started_at: datetime | None = None
    stage_tally: Tally = field(default_factory=Tally)
    status: Status = "running"
    reason: str | None = None

    @property
    def percent(self) -> float:
        """The challenger's share of served traffic now."""
        if self.status == "completed":
            return 100.0
        if self.status == "aborted":
            return 0.0
        return self.stages[self.stage].percent

    @property
    def shadowed(self) -> bool:
        """Whether the side that serves nothing scores every request too (for the verdict, never for callers)."""
        return self.status == "running" and self.stages[self.stage].shadowed

    @property
    def salt(self) -> str:
        return split_salt(self.model_name, self.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "champion_version": self.champion_version,
            "strategy": self.strategy,
            "correlation_id": self.correlation_id,
            "stages": [s.to_dict() for s in self.stages],
            "started_at": self.started_at.isoformat(),
            "stage": self.stage,
            "stage_started_at": None if self.stage_started_at is None else self.stage_started_at.isoformat(),
            "stage_tally": self.stage_tally.to_dict(),
            "status": self.status,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutPlan:
        return cls(
            model_name=data["model_name"],
            version=int(data["version"]),
            champion_version=data["champion_version"],
            strategy=data["strategy"],
            correlation_id=data["correlation_id"],
            stages=tuple(Stage.from_dict(s) for s in data["stages"]),
            started_at=datetime.fromisoformat(data["started_at"]),
            stage=int(data["stage"]),
            stage_started_at=None
            if data["stage_started_at"] is None
            else datetime.fromisoformat(data["stage_started_at"]),
            stage_tally=Tally.from_dict(data["stage_tally"]),
            status=data["status"],
            reason=data["reason"],
        )


def start(
    policy: RolloutPolicy,
    model_name: str,
    version: int,
    champion_version: int | None,
    correlation_id: str,
    now: datetime,
) -> RolloutPlan:
    """A new rollout at its first stage; ``direct``, or one with no champion to compare with, is complete at once."""
    plan = RolloutPlan(
        model_name,
        version,
        champion_version,
        policy.strategy,
        correlation_id,
        stages(policy),
        now,
        stage_started_at=now,
    )
    if not plan.stages or champion_version is None:
        return replace(plan, status="completed", reason="nothing to compare with" if plan.stages else None)
    return plan


@dataclass(frozen=True)
class Progress:
    """What one look at a rollout found: its new state, the verdict, and what changed (an event to publish)."""

    plan: RolloutPlan
    verdict: Verdict | None
    transition: Transition


def step(
    plan: RolloutPlan, tally: Tally, now: datetime, policy: RolloutPolicy, p99_ms: float | None = None
) -> Progress:
    """Look at a running rollout with both sides' outcomes since it began.

    A verdict against aborts at once. Otherwise a stage ends when it has lasted
    ``min_duration`` and each side has ``min_outcomes`` within it (an A/B
    stage: when its budget is spent, by the fixed-sample test); after the last
    stage the rollout is complete.
    """
    if plan.status != "running":
        return Progress(plan, None, "none")
    verdict = judge(tally, policy, p99_ms)
    if verdict.decision == "abort":
        return Progress(replace(plan, status="aborted", reason=verdict.reason), verdict, "aborted")
    current = plan.stages[plan.stage]
    within = tally.since(plan.stage_tally)
    if current.budget is not None:
        if within.challenger.outcomes + within.champion.outcomes < current.budget:
            return Progress(plan, verdict, "none")
        final = non_inferior_at_budget(within, policy)
        if final.decision == "abort":
            return Progress(replace(plan, status="aborted", reason=final.reason), final, "aborted")
        return Progress(replace(plan, status="completed", reason=final.reason), final, "completed")
    started = plan.stage_started_at or plan.started_at
    if now - started < current.min_duration:
        return Progress(plan, verdict, "none")
    if min(within.challenger.outcomes, within.champion.outcomes) < current.min_outcomes:
        return Progress(plan, verdict, "none")
    if plan.stage + 1 == len(plan.stages):
        return Progress(replace(plan, status="completed", reason="every stage passed"), verdict, "completed")
    advanced = replace(plan, stage=plan.stage + 1, stage_started_at=now, stage_tally=tally)
    return Progress(advanced, verdict, "stepped")


def abort(plan: RolloutPlan, reason: str) -> RolloutPlan:
    """Stop a running rollout from outside the verdict (an operator, a version that fails to load)."""
    return replace(plan, status="aborted", reason=reason) if plan.status == "running" else plan
