"""The rollout domain: a split that is stable and monotone, a verdict checked by simulation, and the plan's steps."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest

from driftloop.config import RolloutPolicy
from driftloop.rollout import (
    MIN_OUTCOMES_TO_JUDGE,
    Arm,
    RolloutPlan,
    Tally,
    abort,
    judge,
    non_inferior_at_budget,
    routes_to_challenger,
    share_of,
    start,
    step,
)

IDS = [f"customer-{i}" for i in range(10_000)]
PERCENTS = [1, 5, 25, 50, 75, 100]
T0 = datetime(2026, 11, 22, 10, tzinfo=UTC)
POLICY = RolloutPolicy()


def test_an_entitys_share_is_fixed_by_its_id_alone() -> None:
    # Pinned: another process, another replica, another Python must route the entity alike.
    assert share_of("customer-42") == 0.6453230587151542
    assert share_of("customer-42", salt="m:2") == 0.78551189061896
    assert [share_of(i) for i in IDS] == [share_of(i) for i in IDS]
    assert all(0 <= share_of(i) < 1 for i in IDS)


@pytest.mark.parametrize("salt", ["", "loan-approval:7"])
def test_an_entity_on_the_challenger_stays_there_as_its_share_grows(salt: str) -> None:
    sides = [{i for i in IDS if routes_to_challenger(i, p, salt)} for p in PERCENTS]
    for smaller, larger in zip(sides, sides[1:], strict=False):
        assert smaller < larger
    assert sides[-1] == set(IDS)
    assert not any(routes_to_challenger(i, 0, salt) for i in IDS)


@pytest.mark.parametrize("salt", ["", "loan-approval:7"])
@pytest.mark.parametrize("percent", PERCENTS[:-1])
def test_the_challengers_share_is_within_a_binomial_bound_of_its_percent(percent: float, salt: str) -> None:
    n, p = len(IDS), percent / 100
    routed = sum(routes_to_challenger(i, percent, salt) for i in IDS)
    assert abs(routed - n * p) <= 4 * math.sqrt(n * p * (1 - p)), routed


def test_each_rollout_draws_its_own_entities() -> None:
    first = {i for i in IDS if routes_to_challenger(i, 5, "m:2")}
    second = {i for i in IDS if routes_to_challenger(i, 5, "m:3")}
    # Independent draws of 5 % overlap on about 5 % of each other: 25 ids, not 500.
    assert len(first & second) < 60


def _paths(
    rng: np.random.Generator, streams: int, looks: int, per_look: tuple[int, int], rates: tuple[float, float]
) -> list[list[Tally]]:
    """Simulated rollouts: both sides' cumulative counts at each look, with ``per_look`` new outcomes each time."""
    errors = [rng.binomial(n, r, size=(streams, looks)).cumsum(axis=1) for n, r in zip(per_look, rates, strict=True)]
    return [
        [
            Tally(Arm(per_look[0] * (k + 1), int(errors[0][s, k])), Arm(per_look[1] * (k + 1), int(errors[1][s, k])))
            for k in range(looks)
        ]
        for s in range(streams)
    ]


def _first(path: list[Tally], decision: str, policy: RolloutPolicy = POLICY) -> Tally | None:
    """The tally at the first look where the verdict says ``decision``, looking after every batch."""
    return next((t for t in path if judge(t, policy).decision == decision), None)


def _at_most(rate: float, alpha: float, streams: int) -> bool:
    """Whether an observed rate is consistent with a true rate of at most ``alpha`` (three standard errors)."""
    return rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / streams)


def test_with_equal_error_rates_the_verdict_aborts_no_more_often_than_alpha_however_often_it_looks() -> None:
    # A 25 % canary looked at after every 80 outcomes, 100 times: a fixed-sample test at 5 % would fire far more.
    paths = _paths(np.random.default_rng(1), 400, 100, (20, 60), (0.15, 0.15))
    aborted = sum(_first(p, "abort") is not None for p in paths) / len(paths)
    assert _at_most(aborted, POLICY.alpha, len(paths)), aborted


def test_a_fixed_sample_test_looked_at_as_often_would_abort_far_more_often() -> None:
    """What the sequential verdict is for: the same streams, a one-sided z-test at 5 % after every batch."""
    paths = _paths(np.random.default_rng(1), 400, 100, (20, 60), (0.15, 0.15))
    z = NormalDist().inv_cdf(1 - POLICY.alpha)

    def fires(path: list[Tally]) -> bool:
        return any(
            (t.challenger.error_rate or 0) - (t.champion.error_rate or 0)
            > z * math.sqrt(t.challenger.variance() + t.champion.variance())
            for t in path
            if min(t.challenger.outcomes, t.champion.outcomes) >= MIN_OUTCOMES_TO_JUDGE
        )

    assert sum(map(fires, paths)) / len(paths) > 3 * POLICY.alpha


def test_a_challenger_worse_by_the_margin_is_passed_no_more_often_than_alpha() -> None:
    paths = _paths(np.random.default_rng(2), 300, 100, (200, 200), (0.15 + POLICY.margin, 0.15))
    advanced = sum(_first(p, "advance") is not None for p in paths) / len(paths)
    assert _at_most(advanced, POLICY.alpha, len(paths)), advanced


def test_a_clearly_worse_challenger_is_aborted_within_a_bounded_number_of_outcomes() -> None:
    paths = _paths(np.random.default_rng(3), 300, 50, (20, 20), (0.30, 0.10))
    firsts = [_first(p, "abort") for p in paths]
    assert all(t is not None for t in firsts)
    assert max(t.challenger.outcomes for t in firsts if t is not None) <= 600


def test_a_non_inferior_challenger_advances() -> None:
    better = _paths(np.random.default_rng(4), 300, 75, (40, 40), (0.10, 0.14))
    assert all(_first(p, "abort") is None for p in better)
    assert all(_first(p, "advance") is not None for p in better)
    equal = _paths(np.random.default_rng(5), 300, 100, (200, 200), (0.15, 0.15))
    assert sum(_first(p, "advance") is not None for p in equal) / len(equal) >= 0.9


def test_the_verdict_waits_for_outcomes_on_both_sides() -> None:
    few = Tally(Arm(MIN_OUTCOMES_TO_JUDGE - 1, MIN_OUTCOMES_TO_JUDGE - 1), Arm(5000, 0))
    verdict = judge(few, POLICY)
    assert (verdict.decision, verdict.difference) == ("continue", None)
    assert judge(Tally(Arm(MIN_OUTCOMES_TO_JUDGE, MIN_OUTCOMES_TO_JUDGE), Arm(5000, 0)), POLICY).decision == "abort"


def test_the_verdict_carries_its_evidence() -> None:
    verdict = judge(Tally(Arm(500, 150), Arm(1500, 150)), POLICY, p99_ms=40)
    evidence = verdict.evidence()
    assert verdict.decision == "abort"
    assert evidence["challenger_outcomes"] == 500 and evidence["champion_errors"] == 150
    assert evidence["challenger_error_rate"] == 0.3 and evidence["champion_error_rate"] == 0.1
    assert evidence["difference"] == pytest.approx(0.2)
    assert 0 < evidence["lower"] < evidence["difference"] < evidence["upper"]
    assert evidence["upper"] - evidence["lower"] == pytest.approx(2 * evidence["radius"])
    assert (evidence["margin"], evidence["alpha"], evidence["p99_ms"]) == (0.02, 0.05, 40)
    json.dumps(evidence)


def test_a_slow_challenger_is_aborted_before_any_outcome_is_in() -> None:
    nothing = Tally()
    ceiling = RolloutPolicy(max_p99_ms=100)
    assert judge(nothing, ceiling, p99_ms=100).decision == "continue"
    assert judge(nothing, ceiling, p99_ms=101).decision == "abort"
    assert judge(nothing, POLICY, p99_ms=10_000).decision == "continue"


def test_an_error_rate_clearly_over_its_ceiling_aborts_even_when_the_champion_is_as_bad() -> None:
    both_bad = Tally(Arm(800, 320), Arm(800, 320))
    assert judge(both_bad, POLICY).decision == "continue"
    assert judge(both_bad, RolloutPolicy(max_error_rate=0.25)).decision == "abort"
    assert judge(both_bad, RolloutPolicy(max_error_rate=0.38)).decision == "continue"


def _ab_outcomes(rng: np.random.Generator, tests: int, per_side: int, rates: tuple[float, float]) -> list[Tally]:
    errors = [rng.binomial(per_side, r, size=tests) for r in rates]
    return [Tally(Arm(per_side, int(errors[0][i])), Arm(per_side, int(errors[1][i]))) for i in range(tests)]


def test_the_ab_test_at_its_budget_passes_an_inferior_challenger_at_most_alpha_and_an_equal_one_mostly() -> None:
    per_side = POLICY.budget // 2
    inferior = _ab_outcomes(np.random.default_rng(6), 2000, per_side, (0.10 + POLICY.margin, 0.10))
    passed = sum(non_inferior_at_budget(t, POLICY).decision == "advance" for t in inferior) / len(inferior)
    assert _at_most(passed, POLICY.alpha, len(inferior)), passed
    equal = _ab_outcomes(np.random.default_rng(7), 2000, per_side, (0.10, 0.10))
    assert sum(non_inferior_at_budget(t, POLICY).decision == "advance" for t in equal) / len(equal) >= 0.75


# The plan.

CANARY = RolloutPolicy.model_validate(
    {"strategy": "canary", "steps": [5, 25, 50, 100], "min_duration": "PT2M", "min_outcomes": 200}
)


def _canary() -> RolloutPlan:
    return start(CANARY, "m", 2, 1, "drift-1", T0)


def _even(outcomes: int, errors: int = 0) -> Tally:
    """Both sides with the same counts: a verdict that is never against."""
    return Tally(Arm(outcomes, errors), Arm(outcomes, errors))


def test_a_direct_rollout_or_a_first_version_is_complete_at_once() -> None:
    direct = start(POLICY, "m", 2, 1, "drift-1", T0)
    assert (direct.status, direct.percent, direct.stages) == ("completed", 100.0, ())
    first = start(CANARY, "m", 1, None, "drift-1", T0)
    assert (first.status, first.percent) == ("completed", 100.0)


def test_a_canary_stage_ends_on_its_duration_and_its_outcomes_both() -> None:
    plan = _canary()
    assert (plan.status, plan.stage, plan.percent, plan.shadowed) == ("running", 0, 5.0, False)
    early = step(plan, _even(1000), T0 + timedelta(minutes=1), CANARY)
    assert (early.transition, early.plan) == ("none", plan)
    short = step(plan, _even(199), T0 + timedelta(minutes=3), CANARY)
    assert (short.transition, short.plan) == ("none", plan)
    stepped = step(plan, _even(200), T0 + timedelta(minutes=3), CANARY)
    assert stepped.transition == "stepped"
    assert stepped.verdict is not None and stepped.verdict.decision == "continue"
    assert (stepped.plan.stage, stepped.plan.percent) == (1, 25.0)
    assert (stepped.plan.stage_started_at, stepped.plan.stage_tally) == (T0 + timedelta(minutes=3), _even(200))


def test_a_stage_counts_the_outcomes_and_time_since_it_began() -> None:
    at_25 = step(_canary(), _even(200), T0 + timedelta(minutes=3), CANARY).plan
    assert step(at_25, _even(399), T0 + timedelta(minutes=10), CANARY).transition == "none"
    assert step(at_25, _even(400), T0 + timedelta(minutes=4), CANARY).transition == "none"
    assert step(at_25, _even(400), T0 + timedelta(minutes=5), CANARY).plan.percent == 50.0


def test_a_canary_completes_after_its_last_stage_below_100() -> None:
    plan, now, seen = _canary(), T0, []
    for outcomes in (200, 400, 600):
        now += timedelta(minutes=2)
        progress = step(plan, _even(outcomes), now, CANARY)
        plan = progress.plan
        seen.append((progress.transition, plan.percent))
    assert seen == [("stepped", 25.0), ("stepped", 50.0), ("completed", 100.0)]
    assert (plan.status, plan.reason) == ("completed", "every stage passed")
    assert step(plan, _even(10_000, 9_000), now + timedelta(hours=1), CANARY).transition == "none"


def test_a_verdict_against_aborts_at_once_whatever_the_stage_has_shown() -> None:
    worse = Tally(Arm(500, 150), Arm(500, 50))
    progress = step(_canary(), worse, T0 + timedelta(seconds=1), CANARY)
    assert progress.transition == "aborted"
    assert (progress.plan.status, progress.plan.percent, progress.plan.shadowed) == ("aborted", 0.0, False)
    assert progress.plan.reason is not None and progress.plan.reason.startswith("challenger's error rate is higher")
    assert progress.verdict is not None and progress.verdict.evidence()["lower"] > 0
    assert step(progress.plan, _even(10_000), T0 + timedelta(hours=1), CANARY).transition == "none"


def test_an_abort_from_outside_stops_only_a_running_rollout() -> None:
    stopped = abort(_canary(), "artifact failed to load")
    assert (stopped.status, stopped.reason, stopped.percent) == ("aborted", "artifact failed to load", 0.0)
    done = start(POLICY, "m", 2, 1, "drift-1", T0)
    assert abort(done, "late") == done


@pytest.mark.parametrize(("strategy", "serving", "shadowed"), [("shadow", 0.0, True), ("blue_green", 100.0, True)])
def test_shadow_and_blue_green_watch_one_stage_with_the_other_side_scoring_beside(
    strategy: str, serving: float, shadowed: bool
) -> None:
    policy = RolloutPolicy.model_validate({"strategy": strategy, "min_outcomes": 300})
    plan = start(policy, "m", 2, 1, "drift-1", T0)
    assert (plan.percent, plan.shadowed) == (serving, shadowed)
    done = step(plan, _even(300), T0 + timedelta(minutes=2), policy)
    assert (done.transition, done.plan.percent, done.plan.shadowed) == ("completed", 100.0, False)
    back = step(plan, Tally(Arm(300, 120), Arm(300, 30)), T0 + timedelta(minutes=1), policy)
    assert (back.transition, back.plan.percent) == ("aborted", 0.0)


def test_an_ab_test_runs_to_its_budget_and_ends_by_the_fixed_sample_test() -> None:
    policy = RolloutPolicy(strategy="ab", split=30, budget=6000)
    plan = start(policy, "m", 2, 1, "drift-1", T0)
    assert plan.percent == 30.0
    before = Tally(Arm(1799, 180), Arm(4200, 420))
    assert step(plan, before, T0 + timedelta(days=1), policy).transition == "none"
    good = step(plan, Tally(Arm(1800, 180), Arm(4200, 420)), T0 + timedelta(hours=1), policy)
    assert (good.transition, good.plan.percent) == ("completed", 100.0)
    unclear = step(plan, Tally(Arm(1800, 200), Arm(4200, 420)), T0 + timedelta(hours=1), policy)
    assert unclear.verdict is not None and unclear.verdict.decision == "abort"
    assert (unclear.transition, unclear.plan.percent) == ("aborted", 0.0)
    assert unclear.plan.reason is not None and unclear.plan.reason.startswith("not shown within the margin")


def test_a_plan_goes_through_json_and_back_unchanged() -> None:
    for plan in (
        _canary(),
        step(_canary(), _even(200), T0 + timedelta(minutes=3), CANARY).plan,
        start(RolloutPolicy(strategy="ab"), "m", 2, 1, "drift-1", T0),
        abort(_canary(), "stopped by an operator"),
        start(POLICY, "m", 1, None, "drift-1", T0),
    ):
        stored: dict[str, Any] = json.loads(json.dumps(plan.to_dict()))
        assert RolloutPlan.from_dict(stored) == plan
