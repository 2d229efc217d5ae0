"""Data drift per feature and of the predictions: the live stream against the version's reference sample.

A detector belongs to one version of one model. It keeps, per column, the
latest ``window`` values (a count-based sliding window) and every
``check_every`` rows compares each full window with that column's reference:

- a numeric column by the two-sample Kolmogorov–Smirnov test (its p-value,
  Smirnov's asymptotic distribution as ``scipy.stats.ks_2samp(method="asymp")``
  computes it), with the Wasserstein distance beside it;
- a categorical column (strings, booleans, numbers with few distinct
  reference values, the predicted class) by the chi-squared test of the
  2 × k table of reference and window counts, with the Jensen–Shannon
  distance beside it; values the reference never held share one column;
- both also by the population stability index (PSI) on the reference's
  quantile bins or on the categories: the effect size.

The p-values of one check are a family: Benjamini–Hochberg keeps its false
discovery rate at ``alpha``. A column drifts when its adjusted p-value is at
most ``alpha`` *and* its PSI reaches ``min_psi``: the p-value keeps a small
window from crying wolf, the PSI keeps a large one from flagging a shift too
small to matter. A drifted column is reported once, and again only after a
check in which it did not drift.

The state that changes per row (windows and counters) goes to and comes back
from plain JSON; the reference profile is rebuilt from the reference sample,
which lives in the artifact store.

>>> import random
>>> from driftloop.config import DataDriftPolicy
>>> from driftloop.reference import ReferenceSample
>>> rng = random.Random(1)
>>> sample = ReferenceSample("m", "r", {"x": [rng.gauss(0, 1) for _ in range(2000)]})
>>> policy = DataDriftPolicy(window=500, check_every=500)
>>> detector = DataDriftDetector("m", 1, ReferenceProfile.from_sample(sample, policy), policy)
>>> [c.findings for c in detector.update([{"x": rng.gauss(0, 1)} for _ in range(1000)])]
[[], []]
>>> shifted = detector.update([{"x": rng.gauss(1, 1)} for _ in range(500)])
>>> [(f.feature, f.statistic, f.p_adjusted < 1e-6, f.psi > 0.5) for f in shifted[0].findings]
[('x', 'ks', True, True)]
>>> restored = DataDriftDetector.from_dict(detector.to_dict(), detector.reference, policy)
>>> restored.to_dict() == detector.to_dict()
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from driftloop.config import DataDriftPolicy
from driftloop.contracts.events import FeatureValue
from driftloop.reference import ReferenceSample

#: Column names of the served prediction: the predicted class and the probability served with it.
PREDICTION = "@prediction"
PROBABILITY = "@probability"

#: Decimals the served probability is compared at. A model sure of a row serves 0.9993 one time and 0.99996
#: the next; quantile bins of such values split hairs no one acts on, and a reference scored by other fits
#: of the same recipe (training's cross-fit) differs from the served model in exactly those digits. Rounded,
#: both are the same 1.00.
PROBABILITY_DIGITS = 2

#: The category of values the reference never held.
OTHER = "@other"

#: Proportions below this are raised to it, so PSI stays finite when a bin is empty on one side.
PSI_FLOOR = 1e-4


def ks_and_wasserstein(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """The KS statistic and the first Wasserstein distance of two samples, from one pass over their union.

    Both are read off the two empirical distribution functions at the pooled
    points: KS is their largest gap, Wasserstein (in the feature's unit) the
    area between them. The union of two sorted runs is merged by a stable
    sort in linear time, so a check costs one sort of the window.

    >>> ks, distance = ks_and_wasserstein(np.array([1.0, 2.0, 3.0]), np.array([2.5, 3.5]))
    >>> round(ks, 4), distance
    (0.6667, 1.0)
    """
    current_sorted = np.sort(current)
    points = np.sort(np.concatenate([reference_sorted, current_sorted]), kind="stable")
    gap = np.abs(
        np.searchsorted(reference_sorted, points, side="right") / reference_sorted.size
        - np.searchsorted(current_sorted, points, side="right") / current_sorted.size
    )
    return float(np.max(gap)), float(np.sum(gap[:-1] * np.diff(points)))


def ks_pvalues(statistics: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Two-sided p-values of KS statistics from samples of sizes ``n`` and ``m``: Smirnov's asymptotic law.

    This is what ``scipy.stats.ks_2samp`` computes with ``method="asymp"``;
    its exact method, which it prefers for samples below 10,000, differs in
    the third decimal at the sizes drift windows have.
    """
    effective = np.round(n * m / (n + m))
    return np.asarray(stats.kstwo.sf(statistics, effective), dtype=float)


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index of two histograms on the same bins: the symmetrised Kullback–Leibler divergence.

    >>> round(psi(np.array([50, 50]), np.array([50, 50])), 6)
    0.0
    >>> round(psi(np.array([50, 50]), np.array([80, 20])), 3)
    0.416
    """
    expected = np.maximum(reference_counts / reference_counts.sum(), PSI_FLOOR)
    actual = np.maximum(current_counts / current_counts.sum(), PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def chi2_statistic(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, int]:
    """Pearson's chi-squared statistic of the 2 × k table of counts and its degrees of freedom.

    Categories empty on both sides are left out; with fewer than two left
    there is nothing to compare (statistic 0 on 0 degrees of freedom).

    >>> chi2_statistic(np.array([10, 10, 0]), np.array([10, 10, 0]))
    (0.0, 1)
    """
    table = np.stack([reference_counts, current_counts]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    return float(np.sum((table - expected) ** 2 / expected)), table.shape[1] - 1


def chi2_pvalues(statistics: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """Upper-tail p-values; a test with no degrees of freedom has p = 1."""
    safe = np.maximum(dof, 1)
    return np.where(dof > 0, stats.chi2.sf(statistics, safe), 1.0)


def jensen_shannon(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Jensen–Shannon distance (base 2, so between 0 and 1) of two histograms.

    >>> jensen_shannon(np.array([1, 0]), np.array([0, 1]))
    1.0
    """
    p = reference_counts / reference_counts.sum()
    q = current_counts / current_counts.sum()
    mean = (p + q) / 2

    def divergence(a: np.ndarray) -> float:
        present = a > 0
        return float(np.sum(a[present] * np.log2(a[present] / mean[present])))

    return math.sqrt(max(0.0, (divergence(p) + divergence(q)) / 2))


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """p-values adjusted for the false discovery rate across a family of tests.

    A test is a discovery at FDR level ``alpha`` when its adjusted p-value is at most ``alpha``.

    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5])).round(3).tolist()
    [0.04, 0.053, 0.053, 0.5]
    """
    m = pvalues.size
    if m == 0:
        return pvalues.astype(float)
    order = np.argsort(pvalues)
    scaled = pvalues[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    result = np.empty(m, dtype=float)
    result[order] = np.minimum(adjusted, 1.0)
    return result


def compared(name: str, values: Sequence[FeatureValue]) -> list[FeatureValue]:
    """A column's values as they are compared: the probability at ``PROBABILITY_DIGITS``, the rest as they are.

    >>> compared(PROBABILITY, [0.99996, 0.514, None]), compared("x", [0.99996])
    ([1.0, 0.51, None], [0.99996])
    """
    if name != PROBABILITY:
        return list(values)
    return [round(v, PROBABILITY_DIGITS) if isinstance(v, float) else v for v in values]


def _number(value: FeatureValue) -> float | None:
    """A finite number, or None for what a numeric column cannot use (absent, NaN, a stray string)."""
    if value is None or isinstance(value, str | bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _level(value: FeatureValue) -> str | None:
    """The category a value counts in: numbers by value (1 and 1.0 are one level), anything else as text."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return repr(float(value)) if math.isfinite(value) else None


@dataclass(frozen=True)
class Comparison:
    """The raw statistics of one column, before p-values."""

    statistic: str
    value: float
    distance_name: str
    distance: float
    psi: float
    dof: int = 0


@dataclass(frozen=True)
class NumericProfile:
    """A numeric column's reference: its sorted values and its quantile bins."""

    name: str
    values: np.ndarray
    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def build(cls, name: str, values: np.ndarray, bins: int) -> NumericProfile:
        ordered = np.sort(values)
        edges = np.unique(np.quantile(ordered, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, ordered, side="right"), minlength=edges.size + 1)
        return cls(name, ordered, edges, counts)

    def window(self, values: Sequence[FeatureValue]) -> list[Any]:
        return [n for n in map(_number, values) if n is not None]

    def compare(self, window: Sequence[Any]) -> Comparison:
        current = np.asarray(window, dtype=float)
        counts = np.bincount(np.searchsorted(self.edges, current, side="right"), minlength=self.edges.size + 1)
        ks, distance = ks_and_wasserstein(self.values, current)
        return Comparison(
            statistic="ks",
            value=ks,
            distance_name="wasserstein",
            distance=distance,
            psi=psi(self.counts, counts),
        )


@dataclass(frozen=True)
class CategoricalProfile:
    """A categorical column's reference: its levels and their counts (the last level is ``OTHER``)."""

    name: str
    levels: dict[str, int]
    counts: np.ndarray

    @classmethod
    def build(cls, name: str, levels: Sequence[str]) -> CategoricalProfile:
        names, counts = np.unique(np.asarray(levels, dtype=str), return_counts=True)
        index = {str(level): i for i, level in enumerate(names.tolist())}
        return cls(name, index, np.append(counts, 0))

    def window(self, values: Sequence[FeatureValue]) -> list[Any]:
        return [level for level in map(_level, values) if level is not None]

    def compare(self, window: Sequence[Any]) -> Comparison:
        other = len(self.levels)
        codes = np.fromiter((self.levels.get(level, other) for level in window), dtype=np.int64, count=len(window))
        counts = np.bincount(codes, minlength=other + 1)
        statistic, dof = chi2_statistic(self.counts, counts)
        return Comparison(
            statistic="chi2",
            value=statistic,
            distance_name="jensen_shannon",
            distance=jensen_shannon(self.counts, counts),
            psi=psi(self.counts, counts),
            dof=dof,
        )


Profile = NumericProfile | CategoricalProfile


def profile(
    name: str, values: Sequence[FeatureValue], policy: DataDriftPolicy, *, categorical: bool = False
) -> Profile | None:
    """How a column is compared, decided by its reference values; None when it holds none.

    Strings and booleans are categories; so are numbers with at most
    ``max_levels`` distinct values, which a KS test would see as a staircase
    of ties.
    """
    present = [v for v in values if v is not None]
    if not categorical and present and not any(isinstance(v, str | bool) for v in present):
        numbers = np.asarray([n for n in map(_number, present) if n is not None], dtype=float)
        if numbers.size and np.unique(numbers).size > policy.max_levels:
            return NumericProfile.build(name, numbers, policy.bins)
    levels = [level for level in map(_level, present) if level is not None]
    return CategoricalProfile.build(name, levels) if levels else None


@dataclass(frozen=True)
class ReferenceProfile:
    """Every column's reference, built once per version from its stored sample."""

    columns: dict[str, Profile]
    rows: dict[str, int]

    @classmethod
    def from_sample(cls, sample: ReferenceSample, policy: DataDriftPolicy) -> ReferenceProfile:
        candidates: list[tuple[str, Profile | None]] = [
            (name, profile(name, values, policy)) for name, values in sample.features.items()
        ]
        candidates.append((PREDICTION, profile(PREDICTION, sample.predictions, policy, categorical=True)))
        candidates.append((PROBABILITY, profile(PROBABILITY, compared(PROBABILITY, sample.probabilities), policy)))
        columns = {name: p for name, p in candidates if p is not None}
        rows = {
            name: int(p.values.size if isinstance(p, NumericProfile) else p.counts.sum()) for name, p in columns.items()
        }
        return cls(columns, rows)


@dataclass(frozen=True)
class FeatureDrift:
    """One column's result in one check."""

    feature: str
    statistic: str
    value: float
    p_value: float
    p_adjusted: float
    psi: float
    distance_name: str
    distance: float
    reference_rows: int
    window_rows: int
    drifted: bool

    def evidence(self) -> dict[str, float]:
        """The numbers a ``DriftDetected`` event carries; the statistic's name is its key."""
        return {
            self.statistic: self.value,
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "psi": self.psi,
            self.distance_name: self.distance,
            "reference_rows": float(self.reference_rows),
            "window_rows": float(self.window_rows),
        }


def check(
    reference: ReferenceProfile, windows: Mapping[str, Sequence[Any]], policy: DataDriftPolicy
) -> list[FeatureDrift]:
    """Compare every full window with its reference; the p-values of the family are adjusted together."""
    names = [name for name in reference.columns if len(windows.get(name, ())) >= policy.window]
    comparisons = [reference.columns[name].compare(windows[name]) for name in names]
    sizes = np.asarray([len(windows[name]) for name in names], dtype=float)
    reference_sizes = np.asarray([reference.rows[name] for name in names], dtype=float)
    values = np.asarray([c.value for c in comparisons], dtype=float)
    is_ks = np.asarray([c.statistic == "ks" for c in comparisons], dtype=bool)
    dof = np.asarray([c.dof for c in comparisons], dtype=float)
    pvalues = np.ones(len(names))
    if is_ks.any():
        pvalues[is_ks] = ks_pvalues(values[is_ks], reference_sizes[is_ks], sizes[is_ks])
    if (~is_ks).any():
        pvalues[~is_ks] = chi2_pvalues(values[~is_ks], dof[~is_ks])
    adjusted = benjamini_hochberg(pvalues)
    return [
        FeatureDrift(
            feature=name,
            statistic=c.statistic,
            value=c.value,
            p_value=float(p),
            p_adjusted=float(q),
            psi=c.psi,
            distance_name=c.distance_name,
            distance=c.distance,
            reference_rows=int(n_ref),
            window_rows=int(n),
            drifted=bool(q <= policy.alpha and c.psi >= policy.min_psi),
        )
        for name, c, p, q, n_ref, n in zip(names, comparisons, pvalues, adjusted, reference_sizes, sizes, strict=True)
    ]


@dataclass(frozen=True)
class DataDriftCheck:
    """What one check found: every column's result, and the columns that drifted since the last check."""

    observations: int
    results: list[FeatureDrift]
    findings: list[FeatureDrift]


@dataclass
class DataDriftDetector:
    """The sliding windows of one version of one model, checked against its reference every ``check_every`` rows."""

    model_name: str
    version: int
    reference: ReferenceProfile
    policy: DataDriftPolicy
    windows: dict[str, deque[Any]] = field(default_factory=dict)
    observations: int = 0
    since_check: int = 0
    flagged: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for name in self.reference.columns:
            self.windows[name] = deque(self.windows.get(name, ()), maxlen=self.policy.window)

    def update(self, rows: Sequence[Mapping[str, FeatureValue]]) -> list[DataDriftCheck]:
        """Add rows (features, and ``PREDICTION``/``PROBABILITY`` when known); one check per ``check_every`` rows.

        A column absent from a row (or ``None``) leaves its window as it is.
        """
        checks: list[DataDriftCheck] = []
        start = 0
        while start < len(rows):
            chunk = rows[start : start + self.policy.check_every - self.since_check]
            start += len(chunk)
            for name, column in self.reference.columns.items():
                self.windows[name].extend(column.window(compared(name, [row.get(name) for row in chunk])))
            self.observations += len(chunk)
            self.since_check += len(chunk)
            if self.since_check >= self.policy.check_every:
                self.since_check = 0
                checks.append(self.check())
        return checks

    def check(self) -> DataDriftCheck:
        results = check(self.reference, self.windows, self.policy)
        drifted = {r.feature for r in results if r.drifted}
        findings = [r for r in results if r.drifted and r.feature not in self.flagged]
        self.flagged = drifted
        return DataDriftCheck(observations=self.observations, results=results, findings=findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "observations": self.observations,
            "since_check": self.since_check,
            "flagged": sorted(self.flagged),
            "windows": {name: list(window) for name, window in self.windows.items()},
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], reference: ReferenceProfile, policy: DataDriftPolicy
    ) -> DataDriftDetector:
        return cls(
            model_name=data["model_name"],
            version=data["version"],
            reference=reference,
            policy=policy,
            windows={name: deque(values) for name, values in data["windows"].items()},
            observations=data["observations"],
            since_check=data["since_check"],
            flagged=set(data["flagged"]),
        )
