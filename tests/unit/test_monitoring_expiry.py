"""Join entries expire by event time: monitoring keeps one horizon of events per partition, whatever the traffic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from driftloop.services.monitoring.join import JoinExpiry


def test_unlabelled_traffic_keeps_one_horizon_of_entries() -> None:
    expiry = JoinExpiry(horizon=60.0)
    sizes = []
    for second in range(10_000):
        expiry.track(f"m:e{second}", float(second))
        expiry.track(f"e{second}", float(second))
        expiry.advance(float(second))
        sizes.append(len(expiry))
    assert max(sizes) == 2 * 61, "the entries of the last 60 s and the current second, two per prediction"
    assert sizes[-1] == 2 * 61


def test_a_key_written_again_keeps_its_first_stamp_and_is_tracked_anew_after_expiring() -> None:
    expiry = JoinExpiry(horizon=10.0)
    expiry.track("m:e1", 0.0)
    expiry.track("m:e1", 9.0)
    assert expiry.advance(15.0) == ["m:e1"]
    expiry.track("m:e1", 16.0)
    assert expiry.advance(20.0) == []
    assert expiry.advance(26.5) == ["m:e1"]


def test_a_late_event_neither_moves_stream_time_back_nor_survives_it() -> None:
    expiry = JoinExpiry(horizon=10.0)
    expiry.advance(100.0)
    expiry.track("late", 50.0)
    assert expiry.advance(50.0) == ["late"]
    assert expiry.latest == 100.0


@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 1_000)), max_size=200), st.floats(0.5, 200))
def test_what_stays_is_exactly_what_is_within_the_horizon(events: list[tuple[int, float]], horizon: float) -> None:
    expiry = JoinExpiry(horizon=horizon)
    stamps: dict[str, float] = {}
    for key_number, at in events:
        key = f"k{key_number}"
        expiry.track(key, at)
        stamps.setdefault(key, at)
        gone = expiry.advance(at)
        assert expiry.latest is not None
        assert all(stamps.pop(key) < expiry.latest - horizon for key in gone)
        assert all(t >= expiry.latest - horizon for t in stamps.values())
        assert len(expiry) == len(stamps)
