"""Which alias change deployment serves: the highest revision wins, whatever order the events arrive in."""

from __future__ import annotations

import itertools

import pytest

from driftloop.aliases import Target
from driftloop.contracts import ModelPromoted, ModelRolledBack


def _promoted(version: int, revision: int | None) -> ModelPromoted:
    return ModelPromoted(
        model_name="m", version=version, artifact_uri=f"file:///v{version}", actor="gate", revision=revision
    )


def _rolled_back(to_version: int, revision: int | None) -> ModelRolledBack:
    return ModelRolledBack(
        model_name="m",
        from_version=to_version + 1,
        to_version=to_version,
        artifact_uri=f"file:///v{to_version}",
        actor="ops",
        reason="bad",
        revision=revision,
    )


def _follow(events: list[ModelPromoted | ModelRolledBack]) -> Target | None:
    """What deployment ends up serving after these events, in this order."""
    current: Target | None = None
    for event in events:
        target = Target.of(event)
        if target.supersedes(current):
            current = target
    return current


def test_a_target_takes_version_uri_and_revision_from_either_event() -> None:
    assert Target.of(_promoted(3, 7)) == Target("m", 3, "file:///v3", 7)
    assert Target.of(_rolled_back(2, 8)) == Target("m", 2, "file:///v2", 8)


def test_the_first_change_is_always_taken() -> None:
    assert Target("m", 1, "u", 5).supersedes(None)
    assert Target("m", 1, "u", None).supersedes(None)


@pytest.mark.parametrize(("new", "current", "wins"), [(6, 5, True), (5, 5, False), (4, 5, False)])
def test_only_a_higher_revision_replaces_the_served_one(new: int, current: int, wins: bool) -> None:
    assert Target("m", 2, "u2", new).supersedes(Target("m", 1, "u1", current)) is wins


def test_a_replayed_older_promotion_never_wins() -> None:
    history = [_promoted(1, 1), _promoted(2, 2), _rolled_back(1, 3)]
    served = _follow([*history, _promoted(2, 2)])
    assert served is not None and (served.version, served.revision) == (1, 3)


def test_every_arrival_order_ends_on_the_highest_revision() -> None:
    changes: list[ModelPromoted | ModelRolledBack] = [
        _promoted(1, 1),
        _promoted(2, 2),
        _rolled_back(1, 3),
        _promoted(3, 4),
    ]
    for order in itertools.permutations(changes):
        served = _follow(list(order))
        assert served is not None and (served.version, served.revision) == (3, 4), order


def test_events_without_a_revision_follow_arrival_order() -> None:
    served = _follow([_promoted(2, None), _promoted(1, None)])
    assert served is not None and served.version == 1


def test_old_history_without_revisions_then_numbered_changes() -> None:
    served = _follow([_promoted(1, None), _promoted(2, None), _promoted(3, 1), _promoted(2, None)])
    assert served is not None and served.version == 2, "an unnumbered change is taken in arrival order"
    served = _follow([_promoted(1, None), _promoted(3, 2), _promoted(2, 1)])
    assert served is not None and served.version == 3
