"""Carrying a staged rollout out: who scores an entity in deployment, and what the track counts and decides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from driftloop.config import RolloutPolicy
from driftloop.contracts import RolloutAborted, RolloutCompleted, RolloutStarted, RolloutStepped
from driftloop.modeling import ModelArtifact
from driftloop.rollout import routes_to_challenger, split_salt, start
from driftloop.services.deployment.domain import RolloutState, Served, ServingTable, Split, follow
from driftloop.services.monitoring.domain import ModelTrack
from tests.unit.test_monitoring_track import POLICY, feed, outcomes

ENTITIES = [f"customer-{i}" for i in range(2000)]
COMMON = {"model_name": "m", "version": 2, "instance": "monitoring"}


def _served(version: int) -> Served:
    return Served("m", version, f"file:///v{version}", ModelArtifact.__new__(ModelArtifact))


def _table(state: RolloutState | None) -> ServingTable:
    table = ServingTable()
    table.swap(_served(1))
    if state is not None:
        table.set_split("m", Split(_served(2), state))
    return table


def _sides(table: ServingTable, entity: str) -> list[tuple[int, str, bool]]:
    return [(s.served.version, s.role, s.serves) for s in table.sides("m", entity)]


def test_a_canary_serves_each_entity_from_one_side_by_its_stable_share() -> None:
    table = _table(RolloutState("m", 2, "canary", 25.0, shadowed=False))
    sides = {e: _sides(table, e) for e in ENTITIES}
    on_challenger = [e for e, s in sides.items() if s == [(2, "challenger", True)]]
    assert all(s in ([(2, "challenger", True)], [(1, "champion", True)]) for s in sides.values())
    assert abs(len(on_challenger) / len(ENTITIES) - 0.25) < 0.03
    assert all(routes_to_challenger(e, 25.0, split_salt("m", 2)) for e in on_challenger)
    assert all(_sides(table, e) == sides[e] for e in ENTITIES), "the same entity, the same side"


def test_a_shadow_serves_the_champion_and_lets_the_challenger_score_unserved() -> None:
    table = _table(RolloutState("m", 2, "shadow", 0.0, shadowed=True))
    assert {tuple(_sides(table, e)) for e in ENTITIES} == {((1, "champion", True), (2, "challenger", False))}


def test_blue_green_serves_the_new_version_and_keeps_the_old_one_scoring_until_it_ends() -> None:
    state = RolloutState("m", 2, "blue_green", 100.0, shadowed=True)
    assert {tuple(_sides(_table(state), e)) for e in ENTITIES} == {((2, "challenger", True), (1, "champion", False))}
    done = follow(state, RolloutCompleted(**COMMON, strategy="blue_green"))
    assert {tuple(_sides(_table(done), e)) for e in ENTITIES} == {((2, "challenger", True),)}
    assert {tuple(_sides(_table(None), e)) for e in ENTITIES} == {((1, "champion", True),)}


def test_deployment_follows_the_rollout_events_and_ignores_its_own_direct_swaps() -> None:
    state = follow(None, RolloutStarted(**COMMON, strategy="canary", percent=5))
    state = follow(state, RolloutStarted(**{**COMMON, "instance": "d-1"}, strategy="direct"))
    state = follow(state, RolloutStepped(**COMMON, strategy="canary", step=1, percent=25, previous_percent=5))
    assert state == RolloutState("m", 2, "canary", 25.0, shadowed=False)
    other = follow(
        state, RolloutStepped(**{**COMMON, "version": 3}, strategy="canary", step=1, percent=50, previous_percent=5)
    )
    assert other == state, "a step of another version changes nothing"
    aborted = follow(state, RolloutAborted(**COMMON, strategy="canary", reason="worse"))
    assert aborted is not None and (aborted.status, aborted.percent) == ("aborted", 0.0)


def _policy() -> RolloutPolicy:
    return RolloutPolicy.model_validate(
        {"strategy": "canary", "steps": [20, 100], "min_duration": "PT0S", "min_outcomes": 50, "margin": 0.05}
    )


def test_the_track_counts_both_sides_keeps_the_champion_current_and_steps_the_plan() -> None:
    track = ModelTrack("m", POLICY)
    track.name_champion(1)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert track.begin(start(_policy(), "m", 2, 1, "drift-1", now)) is None
    feed(track, outcomes(1, [(300, 0.10)], seed=1) + outcomes(2, [(100, 0.02)], seed=2, start=1000))
    assert (track.tally.champion.outcomes, track.tally.challenger.outcomes) == (300, 100)
    assert track.current is not None and track.current.version == 1, "a challenger never becomes current"
    again = ModelTrack.from_dict(track.to_dict(), "m", POLICY)
    assert (again.tally, again.rollout, again.champion) == (track.tally, track.rollout, 1)
    progress = track.look(_policy(), now + timedelta(seconds=1))
    assert progress is not None and progress.transition == "completed"
    assert track.look(_policy(), now + timedelta(seconds=2)) is None


def test_a_worse_challenger_is_aborted_and_a_new_stage_supersedes_a_running_one() -> None:
    track = ModelTrack("m", POLICY)
    track.name_champion(1)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    track.begin(start(_policy(), "m", 2, 1, "drift-1", now))
    feed(track, outcomes(1, [(400, 0.02)], seed=3) + outcomes(2, [(100, 0.5)], seed=4, start=1000))
    progress = track.look(_policy(), now)
    assert progress is not None and progress.transition == "aborted" and progress.verdict is not None
    assert progress.verdict.lower is not None and progress.verdict.lower > 0
    track.begin(start(_policy(), "m", 3, 1, "drift-2", now))
    superseded = track.begin(start(_policy(), "m", 4, 1, "drift-3", now))
    assert superseded is not None and superseded.version == 3
    assert track.withdraw(4, "not loaded") and not track.withdraw(4, "twice")
