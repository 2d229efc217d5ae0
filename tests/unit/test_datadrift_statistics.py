"""The data-drift statistics agree with scipy's on the same samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from driftloop.services.monitoring.datadrift import (
    ReferenceSteps,
    benjamini_hochberg,
    chi2_pvalues,
    chi2_statistic,
    jensen_shannon,
    ks_pvalues,
    psi,
    wasserstein,
)


def ks_and_wasserstein(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """A window's KS statistic and Wasserstein distance as a check finds them (KS from its values' positions)."""
    steps = ReferenceSteps.of(reference_sorted)
    return steps.ks(steps.positions(current)), wasserstein(reference_sorted, np.sort(current))


SAMPLES = [
    ("same normal", lambda r: r.normal(0, 1, 2000), lambda r: r.normal(0, 1, 1000)),
    ("shifted normal", lambda r: r.normal(0, 1, 2000), lambda r: r.normal(0.15, 1, 1000)),
    ("wider", lambda r: r.normal(0, 1, 1500), lambda r: r.normal(0, 1.3, 700)),
    ("skewed, small window", lambda r: r.lognormal(0, 1, 2000), lambda r: r.lognormal(0.1, 1, 120)),
    ("ties", lambda r: r.integers(0, 20, 2000).astype(float), lambda r: r.integers(1, 21, 500).astype(float)),
]


@pytest.mark.parametrize(("case", "reference", "current"), SAMPLES, ids=[s[0] for s in SAMPLES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_matches_scipy(case: str, reference: object, current: object, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = reference(rng), current(rng)  # type: ignore[operator]
    expected = stats.ks_2samp(a, b, method="asymp")
    d, _ = ks_and_wasserstein(np.sort(a), b)
    p = ks_pvalues(np.array([d]), np.array([a.size]), np.array([b.size]))[0]
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    exact = stats.ks_2samp(a, b, method="exact").pvalue
    assert p == pytest.approx(exact, abs=0.02), "the asymptotic law is close to the exact one at these sizes"


@pytest.mark.parametrize(("case", "reference", "current"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_wasserstein_matches_scipy(case: str, reference: object, current: object) -> None:
    rng = np.random.default_rng(7)
    a, b = reference(rng), current(rng)  # type: ignore[operator]
    _, distance = ks_and_wasserstein(np.sort(a), b)
    assert distance == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)


TABLES = [
    (np.array([500, 300, 200]), np.array([260, 140, 100])),
    (np.array([500, 300, 200]), np.array([150, 200, 150])),
    (np.array([900, 100]), np.array([430, 70])),
    (np.array([40, 0, 60, 5]), np.array([30, 12, 50, 0])),
    (np.array([1000, 1, 1, 998]), np.array([480, 0, 3, 517])),
]


@pytest.mark.parametrize(("reference", "current"), TABLES)
def test_chi2_matches_scipy_contingency(reference: np.ndarray, current: np.ndarray) -> None:
    table = np.stack([reference, current])
    expected = stats.chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
    statistic, dof = chi2_statistic(reference, current)
    p = chi2_pvalues(np.array([statistic]), np.array([dof]))[0]
    assert statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert dof == expected.dof
    assert p == pytest.approx(expected.pvalue, rel=1e-9)


def test_chi2_of_a_single_category_is_no_evidence() -> None:
    statistic, dof = chi2_statistic(np.array([10, 0]), np.array([7, 0]))
    assert (statistic, dof) == (0.0, 0)
    assert chi2_pvalues(np.array([statistic]), np.array([dof])).tolist() == [1.0]


@pytest.mark.parametrize(("reference", "current"), TABLES)
def test_jensen_shannon_matches_scipy(reference: np.ndarray, current: np.ndarray) -> None:
    assert jensen_shannon(reference, current) == pytest.approx(jensenshannon(reference, current, base=2), abs=1e-12)


@pytest.mark.parametrize(("reference", "current"), [t for t in TABLES if (t[0] > 0).all() and (t[1] > 0).all()])
def test_psi_is_the_symmetrised_kullback_leibler_divergence(reference: np.ndarray, current: np.ndarray) -> None:
    p, q = reference / reference.sum(), current / current.sum()
    assert psi(reference, current) == pytest.approx(float(rel_entr(p, q).sum() + rel_entr(q, p).sum()), rel=1e-12)


def test_psi_stays_finite_when_one_side_has_an_empty_bin_and_grows_with_the_shift() -> None:
    reference = np.array([500, 500, 0])
    small, large = np.array([480, 500, 20]), np.array([300, 500, 200])
    assert 0 < psi(reference, small) < psi(reference, large) < 10
    assert psi(reference, reference) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pvalues = np.concatenate([rng.uniform(0, 1, 15), rng.uniform(0, 0.005, 5), [1.0, 1.0]])
    rng.shuffle(pvalues)
    expected = stats.false_discovery_control(pvalues, method="bh")
    np.testing.assert_allclose(benjamini_hochberg(pvalues), expected, rtol=1e-12)


def test_benjamini_hochberg_of_no_tests_is_empty() -> None:
    assert benjamini_hochberg(np.array([])).size == 0
