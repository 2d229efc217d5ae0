"""A model's monitors: once per outcome across replays, one monitor per version, drift only when the error rises."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError
from river import drift as river_drift

from driftloop.config import CusumPolicy, DriftPolicy, load_config
from driftloop.services.monitoring.cusum import BernoulliCusum
from driftloop.services.monitoring.domain import ModelMonitor, ModelTrack
from driftloop.services.monitoring.join import Outcome

#: The CUSUM with the grace and window the tests count with; ADWIN, the default detector, beside it.
POLICY = DriftPolicy(detector="cusum", grace_observations=200, accuracy_window=300)
ADWIN = DriftPolicy(detector="adwin", delta=0.002, grace_observations=200, accuracy_window=300)
DETECTORS = pytest.mark.parametrize("policy", [POLICY, ADWIN], ids=["cusum", "adwin"])


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


def new_track(policy: DriftPolicy = POLICY) -> ModelTrack:
    return ModelTrack("m", policy)


def test_a_replayed_outcome_counts_once() -> None:
    stream = outcomes(1, [(500, 0.1)])
    track = new_track()
    feed(track, stream[:300])
    saved = track.to_dict()
    feed(track, stream[300:])
    again = ModelTrack.from_dict(saved, "m", POLICY)
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


def test_the_default_detector_is_adwin_and_the_cusum_is_selectable() -> None:
    shipped = load_config(Path(__file__).resolve().parents[2] / "driftloop.yaml").drift
    assert DriftPolicy().detector == shipped.detector == "adwin" and shipped.cusum == CusumPolicy()
    feed(track := new_track(), outcomes(1, [(10, 0.1)]))
    assert isinstance(track.monitors[1].detector, BernoulliCusum)
    feed(track := new_track(ADWIN), outcomes(1, [(10, 0.1)]))
    assert isinstance(track.monitors[1].detector, river_drift.ADWIN)
    assert track.monitors[1].detector_name == "adwin(delta=0.002)"
    with pytest.raises(ValidationError, match="grace_observations"):
        DriftPolicy(grace_observations=500, cusum=CusumPolicy(reference=300))


@DETECTORS
def test_drift_fires_when_the_error_rises_and_not_when_it_falls(policy: DriftPolicy) -> None:
    rising = new_track(policy)
    found = feed(rising, outcomes(1, [(1500, 0.05), (1500, 0.45)]))
    assert len(found) == 1 and 1500 < found[0] < 1700
    falling = new_track(policy)
    assert feed(falling, outcomes(1, [(1500, 0.45), (1500, 0.05)])) == [], "a model that got better needs no retrain"
    assert falling.monitors[1].drift is None


def test_the_cusum_drift_names_its_detector_the_run_that_crossed_and_its_statistic() -> None:
    track = new_track()
    stream = outcomes(1, [(1500, 0.05), (1500, 0.45)])
    found = feed(track, stream)
    drift = track.monitors[1].drift
    assert drift is not None and drift.detector == "cusum(arl=1e+08, rise=0.05, reference_se=2, reference=10000)"
    assert 1490 <= drift.change_point_time <= found[0], "where the CUSUM last left zero, in event time"
    assert drift.window == drift.observations - drift.statistics["change_index"]
    assert drift.statistics["statistic"] >= drift.statistics["threshold"]
    assert drift.statistics["p0"] > drift.statistics["reference_error_rate"], "the reference is taken high"
    before = [not o.correct for o in stream[:1500]]
    assert drift.statistics["reference_outcomes"] == 1500, "the run under way did not join the reference"
    assert drift.statistics["reference_error_rate"] == sum(before) / 1500
    assert drift.accuracy_before > 0.9 > 0.7 > drift.accuracy_after


@DETECTORS
def test_a_monitor_read_back_from_its_json_goes_on_where_it_was(policy: DriftPolicy) -> None:
    """The CUSUM's state is written whole, so it goes on exactly; ADWIN is rebuilt from the recent outcomes."""
    stream = outcomes(1, [(1000, 0.05), (1000, 0.45)])
    whole = new_track(policy)
    whole_found = feed(whole, stream)
    half = new_track(policy)
    feed(half, stream[:1050])
    resumed = ModelTrack.from_dict(orjson.loads(orjson.dumps(half.to_dict())), "m", policy)
    resumed_found = [1050 + i for i in feed(resumed, stream[1050:])]
    if policy.detector == "cusum":
        assert resumed_found == whole_found
    else:
        assert resumed_found and abs(resumed_found[0] - whole_found[0]) < 50
    assert resumed.monitors[1].rolling_accuracy == whole.monitors[1].rolling_accuracy
    assert ModelMonitor.from_dict(whole.monitors[1].to_dict(), policy).drift == whole.monitors[1].drift


def test_a_state_written_under_the_other_detector_is_rebuilt_from_its_recent_outcomes() -> None:
    """A stack upgraded from ADWIN (whose stored monitors hold no CUSUM) keeps its monitors, and they still see
    a rise; a switch back to ADWIN likewise."""
    stream = outcomes(1, [(1000, 0.05), (1000, 0.45)])
    under_adwin = new_track(ADWIN)
    feed(under_adwin, stream[:900])
    stored = orjson.loads(orjson.dumps(under_adwin.to_dict()))
    assert stored["monitors"]["1"]["cusum"] is None
    upgraded = ModelTrack.from_dict(stored, "m", POLICY)
    assert upgraded.monitors[1].observations == 900
    found = [900 + i for i in feed(upgraded, stream[900:])]
    assert len(found) == 1 and 1000 < found[0] < 1100
    back = ModelTrack.from_dict(orjson.loads(orjson.dumps(upgraded.to_dict())), "m", ADWIN)
    assert back.monitors[1].drift == upgraded.monitors[1].drift
    assert back.monitors[1].detector_name == "adwin(delta=0.002)"


@DETECTORS
def test_an_unresolved_drift_is_raised_again_after_a_back_off_that_doubles(policy: DriftPolicy) -> None:
    """The drifted version keeps serving (its run failed): the monitor must not stay silent for good."""
    track = new_track(policy)
    stream = outcomes(1, [(1000, 0.05), (4000, 0.45)])
    detected = [d for o in stream[:1200] if (d := track.apply(o)) is not None]
    assert [d.attempt for d in detected] == [1], "named by its number on the version"
    first = track.monitors[1].drift
    assert first is not None
    track.drifts = [{"model_version": 1, "correlation_id": "turn-1", "event_id": "drift-1"}]
    assert track.rearm("another-turn") is None, "a run of another turn re-arms nothing"
    rearmed = track.rearm("turn-1")
    assert rearmed is not None and (rearmed.attempts, rearmed.backoff) == (1, 200)
    assert track.rearm("turn-1") is None, "a repeated notice re-arms once"
    again = [(1200 + i, d.attempt) for i, o in enumerate(stream[1200:]) if (d := track.apply(o)) is not None]
    assert again[:1] == [(1200 + 200 - 1, 2)], "raised again at the first outcome past the back-off"
    second = track.monitors[1].drift
    assert second is not None and second.change_point_time == first.change_point_time
    assert second.accuracy_before == first.accuracy_before and second.accuracy_after < 0.7
    track.drifts.append({"model_version": 1, "correlation_id": "turn-2", "event_id": "drift-2"})
    assert track.rearm("turn-2") is not None and track.monitors[1].armed_after - track.monitors[1].observations == 400
    assert track.monitors[1].unresolved


@DETECTORS
def test_a_recovered_model_is_not_raised_again(policy: DriftPolicy) -> None:
    track = new_track(policy)
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


@DETECTORS
def test_a_backlog_is_read_in_event_order_and_counted_once(policy: DriftPolicy) -> None:
    """Read as it arrives, the backlog has the drifted outcomes of some events inside the grace period, and the
    old regime comes back after them: the CUSUM takes the new error rate for its reference and misses the
    drift. In event order the drift is found soon after it began; a repeat counts once, within the batch or
    in a later one."""
    stream = backlog(outcomes(1, [(700, 0.02), (500, 0.5)], seed=1))
    if policy.detector == "cusum":
        assert feed(new_track(policy), stream) == [], "the fault this guards against"
    track = new_track(policy)
    taken = track.in_event_order(stream + stream[:100])
    assert [o.event_time for o in taken] == sorted(o.event_time for o in stream)
    found = [o.event_time for o in taken if track.apply(o) is not None]
    assert len(found) == 1 and 700 <= found[0] < 800
    assert track.in_event_order(stream) == [] and track.monitors[1].observations == 1200
