"""The data-drift detector's checks computed the straightforward way: every window read afresh at every check.

Windows are plain lists of values (as the detector stores them); each check
converts every window, sorts and merges it with its reference, bins and
counts it, and asks scipy for every KS p-value. It is kept apart from
``driftloop.services.monitoring.datadrift`` (of which it shares only the
value-by-value rules of what a column can use, ``number`` and ``level``) so that the detector, however
it computes a check, can be held to it (the unit tests: the same statistics,
p-values, PSI, verdicts and findings) and measured against it
(``tests.bench.bench_pipeline``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from driftloop.config import DataDriftPolicy
from driftloop.contracts.events import FeatureValue
from driftloop.services.monitoring.datadrift import (
    CategoricalProfile,
    Comparison,
    DataDriftCheck,
    FeatureDrift,
    NumericProfile,
    ReferenceProfile,
    _level,
    _number,
    benjamini_hochberg,
    chi2_pvalues,
    chi2_statistic,
    compared,
    jensen_shannon,
    psi,
)

#: The rules of what a numeric or a categorical column makes of one value, as the detector applies them one
#: value at a time; its batch conversions are held to them.
number, level = _number, _level


def ks_and_wasserstein(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Both read off the two empirical distribution functions at every point of the pooled, sorted samples."""
    current_sorted = np.sort(current)
    points = np.sort(np.concatenate([reference_sorted, current_sorted]), kind="stable")
    gap = np.abs(
        np.searchsorted(reference_sorted, points, side="right") / reference_sorted.size
        - np.searchsorted(current_sorted, points, side="right") / current_sorted.size
    )
    return float(np.max(gap)), float(np.sum(gap[:-1] * np.diff(points)))


def compare(column: NumericProfile | CategoricalProfile, window: Sequence[Any]) -> Comparison:
    if isinstance(column, NumericProfile):
        current = np.asarray(window, dtype=float)
        counts = np.bincount(np.searchsorted(column.edges, current, side="right"), minlength=column.edges.size + 1)
        ks, distance = ks_and_wasserstein(column.values, current)
        return Comparison("ks", ks, "wasserstein", distance, psi(column.counts, counts))
    other = len(column.levels)
    codes = np.fromiter((column.levels.get(x, other) for x in window), dtype=np.int64, count=len(window))
    counts = np.bincount(codes, minlength=other + 1)
    statistic, dof = chi2_statistic(column.counts, counts)
    return Comparison(
        "chi2", statistic, "jensen_shannon", jensen_shannon(column.counts, counts), psi(column.counts, counts), dof
    )


def check(
    reference: ReferenceProfile, windows: Mapping[str, Sequence[Any]], policy: DataDriftPolicy
) -> list[FeatureDrift]:
    names = [name for name in reference.columns if len(windows[name]) >= policy.window]
    comparisons = [compare(reference.columns[name], windows[name]) for name in names]
    sizes = np.asarray([len(windows[name]) for name in names], dtype=float)
    reference_sizes = np.asarray([reference.rows[name] for name in names], dtype=float)
    values = np.asarray([c.value for c in comparisons], dtype=float)
    is_ks = np.asarray([c.statistic == "ks" for c in comparisons], dtype=bool)
    dof = np.asarray([c.dof for c in comparisons], dtype=float)
    pvalues = np.ones(len(names))
    if is_ks.any():
        n, m = reference_sizes[is_ks], sizes[is_ks]
        pvalues[is_ks] = stats.kstwo.sf(values[is_ks], np.round(n * m / (n + m)))
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


class StraightDetector:
    """``DataDriftDetector``'s windows and checks, each check computed from the windows' values alone."""

    def __init__(self, reference: ReferenceProfile, policy: DataDriftPolicy) -> None:
        self.reference = reference
        self.policy = policy
        self.windows: dict[str, deque[Any]] = {name: deque(maxlen=policy.window) for name in reference.columns}
        self.observations = 0
        self.since_check = 0
        self.flagged: set[str] = set()

    def update(self, rows: Sequence[Mapping[str, FeatureValue]]) -> list[DataDriftCheck]:
        checks: list[DataDriftCheck] = []
        start = 0
        while start < len(rows):
            chunk = rows[start : start + self.policy.check_every - self.since_check]
            start += len(chunk)
            for name, column in self.reference.columns.items():
                convert = number if isinstance(column, NumericProfile) else level
                values = map(convert, compared(name, [row.get(name) for row in chunk]))
                self.windows[name].extend(v for v in values if v is not None)
            self.observations += len(chunk)
            self.since_check += len(chunk)
            if self.since_check >= self.policy.check_every:
                self.since_check = 0
                results = check(self.reference, self.windows, self.policy)
                findings = [r for r in results if r.drifted and r.feature not in self.flagged]
                self.flagged = {r.feature for r in results if r.drifted}
                checks.append(DataDriftCheck(self.observations, results, findings))
        return checks
