"""The Bernoulli CUSUM: its threshold keeps the false alarms it promises, it sees rises only, and it resumes exactly."""

from __future__ import annotations

import math
import random

import numpy as np
import orjson
import pytest

from driftloop.config import CusumPolicy
from driftloop.services.monitoring.cusum import (
    BernoulliCusum,
    CusumDesign,
    average_run_length,
    steps,
    threshold_for,
    tilt,
)


def simulated_run_lengths(p0: float, p1: float, threshold: float, rate: float, runs: int, seed: int) -> np.ndarray:
    """Outcomes to the first alarm of ``runs`` independent CUSUMs from zero, errors at ``rate``."""
    up, down = steps(p0, p1)
    rng = np.random.default_rng(seed)
    statistic = np.zeros(runs)
    lengths = np.zeros(runs)
    alive = np.arange(runs)
    t = 0
    while alive.size:
        block = rng.random((256, alive.size)) < rate
        current = statistic[alive]
        ended = np.zeros(alive.size, dtype=bool)
        for i in range(block.shape[0]):
            current = np.maximum(0.0, current + np.where(block[i], up, down))
            crossed = ~ended & (current >= threshold)
            lengths[alive[crossed]] = t + i + 1
            ended |= crossed
        statistic[alive] = current
        alive = alive[~ended]
        t += block.shape[0]
    return lengths


@pytest.mark.parametrize(
    ("p0", "rise", "longest"),
    [(0.3, 0.1, 1.2), (0.15, 0.07, 1.2), (0.05, 0.1, 1.3), (0.01, 0.05, 1.7)],
    ids=["p0=0.3", "p0=0.15", "p0=0.05", "p0=0.01"],
)
def test_the_threshold_for_a_target_run_length_gives_that_run_length_in_simulation(
    p0: float, rise: float, longest: float
) -> None:
    """Siegmund's approximation, checked where a simulation can reach (a target of 3,000 outcomes): the real
    mean time to a false alarm is never much shorter than promised. At a small ``p0`` it is longer, since an
    error is a step up far larger than Siegmund's overshoot allows for: that costs a fraction of an error's
    step of detection, never a false alarm. (The Brownian form, θ = −2μ/σ², fails the lower bound there.)"""
    target = 3000.0
    threshold = threshold_for(p0, p0 + rise, target)
    lengths = simulated_run_lengths(p0, p0 + rise, threshold, p0, runs=1500, seed=1)
    # Run lengths are nearly exponential: the mean of 1,500 is within 2.6 % of the truth at one standard error.
    assert 0.9 * target < lengths.mean() < longest * target


def test_the_approximation_also_gives_the_detection_delay_after_a_rise() -> None:
    threshold = threshold_for(0.1, 0.2, 1e6)
    lengths = simulated_run_lengths(0.1, 0.2, threshold, 0.25, runs=800, seed=2)
    assert abs(lengths.mean() / average_run_length(threshold, 0.1, 0.2, rate=0.25) - 1) < 0.1


def test_the_steps_are_log_likelihood_ratios_so_the_tilt_at_the_reference_is_one() -> None:
    """Wald's identity, which lets the in-control run length be written with θ = 1."""
    for p0, p1 in [(0.2, 0.3), (0.002, 0.052), (0.6, 0.8)]:
        assert tilt(p0, *steps(p0, p1)) == pytest.approx(1.0, abs=1e-9)
        assert tilt(p1, *steps(p0, p1)) == pytest.approx(-1.0, abs=1e-9), "and minus one at the rate tested for"


def test_the_threshold_is_the_smallest_that_reaches_the_target_and_grows_with_it() -> None:
    low, high = threshold_for(0.1, 0.15, 1e6), threshold_for(0.1, 0.15, 1e8)
    assert average_run_length(high, 0.1, 0.15) >= 1e8 > average_run_length(high - 1e-6, 0.1, 0.15)
    assert high > low and high - low == pytest.approx(math.log(100), rel=0.05), "ARL grows as exp(h) at θ = 1"


def test_the_reference_is_taken_high_and_never_at_zero() -> None:
    policy = CusumPolicy(reference_se=2.0, rise=0.05)
    design = CusumDesign.of(30, 200, policy)
    standard_error = math.sqrt(0.15 * 0.85 / 200)
    assert design.estimate == 0.15 and design.p0 == pytest.approx(0.15 + 2 * standard_error, abs=0.01)
    assert design.p1 == pytest.approx(design.p0 + 0.05)
    never_wrong = CusumDesign.of(0, 200, policy)
    assert 0 < never_wrong.p0 < 0.03 and math.isfinite(never_wrong.threshold)
    always_wrong = CusumDesign.of(200, 200, policy)
    assert always_wrong.p0 < always_wrong.p1 < 1


def errors(segments: list[tuple[int, float]], seed: int) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < rate for count, rate in segments for _ in range(count)]


def alarms(cusum: BernoulliCusum, stream: list[bool], start: int = 0) -> list[int]:
    return [start + i for i, error in enumerate(stream) if cusum.update(error, float(start + i))]


POLICY = CusumPolicy()


def test_a_rise_is_found_soon_and_its_start_is_where_the_statistic_last_left_zero() -> None:
    cusum = BernoulliCusum(POLICY, grace=200)
    found = alarms(cusum, errors([(3000, 0.1), (2000, 0.3)], seed=3))
    assert found and 3000 < found[0] < 3200
    assert cusum.run_start is not None and 2950 < cusum.run_start <= found[0]
    assert cusum.change_index == int(cusum.run_start)


@pytest.mark.parametrize("after", [0.05, 0.0])
def test_a_fall_of_the_error_rate_never_fires_it(after: float) -> None:
    cusum = BernoulliCusum(POLICY, grace=200)
    assert alarms(cusum, errors([(2000, 0.2), (50_000, after)], seed=4)) == []
    assert cusum.statistic == 0.0


def test_nothing_is_tested_before_the_grace_period_and_the_reference_stops_at_its_size() -> None:
    cusum = BernoulliCusum(CusumPolicy(reference=500), grace=200)
    assert alarms(cusum, [True] * 199) == [] and cusum.design is None, "199 errors in a row, still in grace"
    cusum = BernoulliCusum(CusumPolicy(reference=500), grace=200)
    stream = errors([(5000, 0.1)], seed=5)
    alarms(cusum, stream[:2000])
    design = cusum.design
    assert cusum.reference_outcomes >= 500, "a run that ended at zero joins it whole, so it may pass its size"
    alarms(cusum, stream[2000:], start=2000)
    assert cusum.design == design, "and then it stays as it is"


def test_a_stationary_stream_raises_no_alarm_at_the_default_run_length() -> None:
    cusum = BernoulliCusum(POLICY, grace=200)
    assert alarms(cusum, errors([(200_000, 0.15)], seed=6)) == []


def test_the_state_read_back_from_json_goes_on_exactly_as_the_detector_it_was() -> None:
    stream = errors([(2500, 0.12), (1500, 0.2)], seed=7)
    whole = BernoulliCusum(POLICY, grace=200)
    expected = alarms(whole, stream)
    assert expected
    for cut in (150, 1100, 2600, expected[0] - 3):
        half = BernoulliCusum(POLICY, grace=200)
        before = alarms(half, stream[:cut])
        again = BernoulliCusum.from_dict(orjson.loads(orjson.dumps(half.to_dict())), POLICY, grace=200)
        assert again.to_dict() == half.to_dict() and again.design == half.design
        assert before + alarms(again, stream[cut:], start=cut) == expected
        assert again.statistic == whole.statistic and again.to_dict() == whole.to_dict()
