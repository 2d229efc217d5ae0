"""A model's monitors: once per outcome across replays, one monitor per version, drift only when the error rises."""

from __future__ import annotations

import random
from dataclasses import replace

from driftloop.services.monitoring.domain import ModelMonitor, ModelTrack
from driftloop.services.monitoring.join import Outcome


def outcomes(version: int, error_rates: list[tuple[int, float]], seed: int = 0, start: int = 0) -> list[Outcome]:
    rng = random.Random(seed)
    out, offset = [], start
    for count, error in error_rates:
        for _ in range(count):
            out.append(
                Outcome("m", version, rng.random() >= error, float(offset), f"e{offset}", (offset % 3, offset, 0))
            )
            offset += 1
    return out


def feed(track: ModelTrack, stream: list[Outcome]) -> list[int]:
    found = []
    for i, outcome in enumerate(stream):
        if track.fresh(outcome) and track.apply(outcome) is not None:
            found.append(i)
    return found


def new_track() -> ModelTrack:
    return ModelTrack("m", delta=0.002, grace=200, window=300)


def test_a_replayed_outcome_counts_once() -> None:
    stream = outcomes(1, [(500, 0.1)])
    track = new_track()
    feed(track, stream[:300])
    saved = track.to_dict()
    feed(track, stream[300:])
    again = ModelTrack.from_dict(saved, "m", 0.002, 200, 300)
    feed(again, stream[250:])  # a crash after the save: the join repeats outcomes from before it
    assert again.monitors[1].observations == track.monitors[1].observations == 500
    assert again.monitors[1].correct_total == track.monitors[1].correct_total


def test_two_outcomes_of_one_join_record_both_count() -> None:
    track = new_track()
    first = Outcome("m", 1, True, 1.0, "e1", (0, 7, 0))
    second = Outcome("m", 1, False, 1.0, "e1", (0, 7, 1))
    feed(track, [first, second, first])
    assert (track.monitors[1].observations, track.monitors[1].correct_total) == (2, 1)


def test_late_outcomes_of_a_superseded_version_do_not_touch_the_current_one() -> None:
    track = new_track()
    feed(track, outcomes(1, [(300, 0.05)]))
    feed(track, outcomes(2, [(150, 0.05)], seed=1, start=300))
    # v1's stragglers, mostly wrong: they land on v1's monitor only, and raise no drift.
    found = feed(track, outcomes(1, [(400, 0.6)], seed=2, start=450))
    assert found == []
    assert track.current is not None and track.current.version == 2
    assert track.monitors[2].observations == 150, "v2 is still in its grace period, undisturbed"
    assert track.monitors[1].observations == 700


def test_drift_fires_when_the_error_rises_and_not_when_it_falls() -> None:
    rising = new_track()
    found = feed(rising, outcomes(1, [(1500, 0.05), (1500, 0.45)]))
    assert len(found) == 1 and 1500 < found[0] < 1700
    falling = new_track()
    assert feed(falling, outcomes(1, [(1500, 0.45), (1500, 0.05)])) == [], "a model that got better needs no retrain"
    assert falling.monitors[1].drift is None


def test_a_monitor_read_back_from_its_json_goes_on_exactly_where_it_was() -> None:
    stream = outcomes(1, [(1000, 0.05), (1000, 0.45)])
    whole = new_track()
    whole_found = feed(whole, stream)
    half = new_track()
    feed(half, stream[:1050])
    resumed = ModelTrack.from_dict(half.to_dict(), "m", 0.002, 200, 300)
    resumed_found = [1050 + i for i in feed(resumed, stream[1050:])]
    assert resumed_found and abs(resumed_found[0] - whole_found[0]) < 50
    assert resumed.monitors[1].rolling_accuracy == whole.monitors[1].rolling_accuracy
    assert ModelMonitor.from_dict(whole.monitors[1].to_dict(), delta=0.002, grace=200, window=300).drift == (
        whole.monitors[1].drift
    )


def test_an_unresolved_drift_is_raised_again_after_a_back_off_that_doubles() -> None:
    """The drifted version keeps serving (its run failed): the monitor must not stay silent for good."""
    track = new_track()
    stream = outcomes(1, [(1000, 0.05), (4000, 0.45)])
    raised = feed(track, stream[:1200])
    assert len(raised) == 1
    first = track.monitors[1].drift
    assert first is not None
    track.drifts = [{"model_version": 1, "correlation_id": "turn-1", "event_id": "drift-1"}]
    assert track.rearm("another-turn") is None, "a run of another turn re-arms nothing"
    rearmed = track.rearm("turn-1")
    assert rearmed is not None and (rearmed.attempts, rearmed.backoff) == (1, 200)
    assert track.rearm("turn-1") is None, "a repeated notice re-arms once"
    again = [1200 + i for i in feed(track, stream[1200:])]
    assert again[:1] == [1200 + 200 - 1], "raised again at the first outcome past the back-off"
    second = track.monitors[1].drift
    assert second is not None and second.change_point_time == first.change_point_time
    assert second.accuracy_before == first.accuracy_before and second.accuracy_after < 0.7
    track.drifts.append({"model_version": 1, "correlation_id": "turn-2", "event_id": "drift-2"})
    assert track.rearm("turn-2") is not None and track.monitors[1].armed_after - track.monitors[1].observations == 400
    assert track.monitors[1].unresolved


def test_a_recovered_model_is_not_raised_again() -> None:
    track = new_track()
    feed(track, outcomes(1, [(1000, 0.05), (300, 0.45)]))
    track.drifts = [{"model_version": 1, "correlation_id": "c", "event_id": "d"}]
    assert track.rearm("c") is not None
    assert feed(track, outcomes(1, [(2000, 0.05)], seed=4, start=1300)) == [], "accuracy came back on its own"


def backlog(stream: list[Outcome], partitions: int = 3) -> list[Outcome]:
    """The outcomes as a backlog reaches the track: the join partitions' shares one after another, first of the
    predictions that carried their label, then of those whose label came on its own (every third)."""
    rng = random.Random(5)
    shares: list[list[Outcome]] = [[] for _ in range(2 * partitions)]
    for i, outcome in enumerate(stream):
        shares[rng.randrange(partitions) + (partitions if i % 3 == 0 else 0)].append(outcome)
    arrived, offsets = [], [0] * partitions
    for number, share in enumerate(shares):
        part = number % partitions
        for outcome in share:
            arrived.append(replace(outcome, source=(part, offsets[part], 0)))
            offsets[part] += 1
    return arrived


def test_a_backlog_is_read_in_event_order_and_counted_once() -> None:
    """Read as it arrives, the backlog has the drifted outcomes of some events before older ones of the old
    regime. In event order the drift is found soon after it began; a repeat counts once, within the batch or
    in a later one."""
    stream = backlog(outcomes(1, [(700, 0.02), (500, 0.5)], seed=1))
    track = new_track()
    taken = track.in_event_order(stream + stream[:100])
    assert [o.event_time for o in taken] == sorted(o.event_time for o in stream)
    found = [o.event_time for o in taken if track.apply(o) is not None]
    assert len(found) == 1 and 700 <= found[0] < 800
    assert track.in_event_order(stream) == [] and track.monitors[1].observations == 1200
