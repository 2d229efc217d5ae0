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

At thousands of rows a second a detector checks tens of times a second,
every column each time, so a check must not redo what the rows already
told it. A window keeps, beside each value, what a check needs of it,
found once when the value arrives (for a batch at once): a numeric value's
position among the reference's distinct values, from which the KS
statistic is a cumulative count, and a categorical value's code. A check
then sorts and counts arrays of ``window`` numbers; a window no row
changed since the last check keeps its comparison; and the KS p-values,
which scipy evaluates slowly, are remembered. Every statistic, p-value and
PSI is the float the straightforward computation (each window converted,
merged with its reference and binned afresh) gives, the Wasserstein
distance to rounding; the unit tests hold them to it.

The state that changes per row (windows and counters) goes to and comes back
from plain JSON, the windows as their values only; the reference profile is
rebuilt from the reference sample, which lives in the artifact store.

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

import functools
import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import NoneType
from typing import Any, cast

import numpy as np
from scipy import special, stats

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


def ks_pvalues(statistics: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Two-sided p-values of KS statistics from samples of sizes ``n`` and ``m``: Smirnov's asymptotic law.

    This is what ``scipy.stats.ks_2samp`` computes with ``method="asymp"``;
    its exact method, which it prefers for samples below 10,000, differs in
    the third decimal at the sizes drift windows have.
    """
    effective = np.round(n * m / (n + m))
    return np.asarray(
        [_kstwo_sf(d, e) for d, e in zip(statistics.tolist(), effective.tolist(), strict=True)], dtype=float
    )


@functools.lru_cache(maxsize=16_384)
def _kstwo_sf(statistic: float, n: float) -> float:
    """``scipy.stats.kstwo.sf`` at one point, remembered.

    scipy sums a series in Python for it, 0.1 to 0.5 ms a call at the sizes
    of drift windows, more than the rest of a column's check. A statistic of
    ``m`` window values against ``n`` reference values is a difference of
    multiples of 1/n and 1/m, and a check only tests full windows, so one
    column's checks keep meeting the same few hundred statistics.
    """
    return float(stats.kstwo.sf(statistic, n))


def wasserstein(reference_sorted: np.ndarray, current_sorted: np.ndarray) -> float:
    """The first Wasserstein distance of two sorted samples: the area between their quantile functions.

    The quantile function of n sorted values is the k-th of them on
    (k/n, (k+1)/n]. On the common refinement of two such grids both
    functions are constant, so the area is a sum of |differences| weighted
    by the pieces' widths, and the pieces depend on the two sizes only
    (``_quantile_pieces``). It is the area between the distribution
    functions too, which is how ``scipy.stats.wasserstein_distance`` finds it.

    >>> wasserstein(np.array([1.0, 2.0, 3.0]), np.array([2.5, 3.5]))
    1.0
    """
    reference_at, current_at, widths = _quantile_pieces(reference_sorted.size, current_sorted.size)
    return float((widths * np.abs(reference_sorted[reference_at] - current_sorted[current_at])).sum())


@functools.lru_cache(maxsize=32)
def _quantile_pieces(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pieces of (0, 1] on which the quantile functions of n and of m values are both constant.

    Each piece's index into either sample and its width; a piece starts at
    a multiple of 1/n or of 1/m, counted here in units of 1/(n m).
    """
    starts = np.union1d(np.arange(n) * m, np.arange(m) * n)
    widths = np.diff(np.append(starts, n * m)) / (n * m)
    return starts // m, starts // n, widths


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index of two histograms on the same bins: the symmetrised Kullback–Leibler divergence.

    >>> round(psi(np.array([50, 50]), np.array([50, 50])), 6)
    0.0
    >>> round(psi(np.array([50, 50]), np.array([80, 20])), 3)
    0.416
    """
    expected = np.maximum(reference_counts / reference_counts.sum(), PSI_FLOOR)
    actual = np.maximum(current_counts / current_counts.sum(), PSI_FLOOR)
    return float(((actual - expected) * np.log(actual / expected)).sum())


def chi2_statistic(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, int]:
    """Pearson's chi-squared statistic of the 2 × k table of counts and its degrees of freedom.

    Categories empty on both sides are left out; with fewer than two left
    there is nothing to compare (statistic 0 on 0 degrees of freedom).

    >>> chi2_statistic(np.array([10, 10, 0]), np.array([10, 10, 0]))
    (0.0, 1)
    """
    table = np.array([reference_counts, current_counts], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 0
    expected = table.sum(axis=1)[:, np.newaxis] * table.sum(axis=0)[np.newaxis, :] / table.sum()
    return float(((table - expected) ** 2 / expected).sum()), table.shape[1] - 1


def chi2_pvalues(statistics: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """Upper-tail p-values; a test with no degrees of freedom has p = 1.

    ``scipy.special.chdtrc`` is what ``scipy.stats.chi2.sf`` evaluates, without the tenfold cost of its argument checks.
    """
    safe = np.maximum(dof, 1)
    return np.where(dof > 0, special.chdtrc(safe, statistics), 1.0)


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
        return float((a[present] * np.log2(a[present] / mean[present])).sum())

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


def _plain(values: Sequence[FeatureValue], kinds: set[type]) -> tuple[Sequence[FeatureValue], set[type]]:
    """The values without the Nones, and the types of what is left."""
    if NoneType not in kinds:
        return values, kinds
    return [v for v in values if v is not None], kinds - {NoneType}


def _numbers(values: Sequence[FeatureValue]) -> np.ndarray:
    """What ``_number`` makes of each value, the Nones left out: a column of ints and floats in one numpy pass.

    >>> _numbers([1, 2.5, None, float("nan"), True, "3"]).tolist(), _numbers([1, 2.5, None, float("inf")]).tolist()
    ([1.0, 2.5], [1.0, 2.5])
    """
    present, kinds = _plain(values, set(map(type, values)))
    if not kinds <= {int, float}:
        return np.asarray([n for n in map(_number, present) if n is not None], dtype=float)
    numbers = np.asarray(present, dtype=float)
    finite = np.isfinite(numbers)
    return numbers if finite.all() else numbers[finite]


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
class ReferenceSteps:
    """A numeric reference's distribution function, as the KS statistic compares a window with it.

    A window value's *position* among the reference's U distinct values is
    2t + 1 when it equals the t-th of them, 2t when it lies between the
    (t-1)-th and the t-th (2U past the last). It is found once per value,
    when the value arrives.

    Between two neighbouring reference values the reference's function is
    flat and the window's rises, so the gap between them there is largest
    at one end: at the first value or just below the next. The window's
    shares at those points are its shares of positions up to 2t + 1 and up
    to 2t, one cumulative sum over the window's counts per position; the
    gaps are then the very quotients a comparison at every pooled point of
    the two samples computes, so the statistic is the same float.

    >>> steps = ReferenceSteps.of(np.array([1.0, 2.0, 2.0, 3.0]))
    >>> steps.positions(np.array([0.5, 1.0, 2.5, 3.0, 9.0])).tolist()
    [0, 1, 4, 5, 6]
    >>> steps.ks(steps.positions(np.array([2.5, 3.5])))
    0.75
    """

    #: Each distinct value followed by the next float above it: a value's position is how many of these are at
    #: or below it (one search, where finding "equal to the t-th" would take a second).
    bounds: np.ndarray
    #: The reference's share at or below each position: below the t-th value at 2t, up to it at 2t + 1, 1.0 at 2U.
    shares: np.ndarray

    @classmethod
    def of(cls, ordered: np.ndarray) -> ReferenceSteps:
        """From the reference's values in ascending order."""
        values, counts = np.unique(ordered, return_counts=True)
        below = np.concatenate([[0], np.cumsum(counts)]) / ordered.size
        return cls(
            bounds=np.column_stack([values, np.nextafter(values, np.inf)]).ravel(),
            shares=below[(np.arange(2 * values.size + 1) + 1) // 2],
        )

    def positions(self, numbers: np.ndarray) -> np.ndarray:
        """Each finite number's position among the reference's distinct values."""
        return self.bounds.searchsorted(numbers, side="right")

    def ks(self, positions: np.ndarray) -> float:
        """The KS statistic of a window from its values' positions: the largest gap between the two functions."""
        counts = np.bincount(positions, minlength=self.shares.size).cumsum()
        return float(np.abs(self.shares - counts / positions.size).max())


@dataclass(frozen=True)
class NumericProfile:
    """A numeric column's reference: its sorted values, their steps and its quantile bins."""

    name: str
    values: np.ndarray
    steps: ReferenceSteps
    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def build(cls, name: str, values: np.ndarray, bins: int) -> NumericProfile:
        ordered = np.sort(values)
        edges = np.unique(np.quantile(ordered, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, ordered, side="right"), minlength=edges.size + 1)
        return cls(name, ordered, ReferenceSteps.of(ordered), edges, counts)

    def window(self, size: int) -> NumericWindow:
        return NumericWindow(self, size)


class NumericWindow:
    """A numeric column's latest ``size`` finite values, oldest first, each with its position among the reference's.

    A value's position is found when it arrives, for a batch at once; it
    then stays in the window for ``size / check_every`` checks or more, and
    each check only sorts and counts.
    """

    def __init__(self, profile: NumericProfile, size: int) -> None:
        self.profile = profile
        self.size = size
        self._values = np.empty(0, dtype=float)
        self._positions = np.empty(0, dtype=np.int64)
        #: The last comparison, until a value arrives: between two checks, rows of one source only may have come.
        self._comparison: Comparison | None = None

    def __len__(self) -> int:
        return self._values.size

    def __iter__(self) -> Iterator[Any]:
        """The values oldest first, as they are stored."""
        return iter(self._values.tolist())

    def extend(self, values: Sequence[FeatureValue]) -> None:
        """Add the usable values (finite numbers), in order; the rest are left out."""
        numbers = _numbers(values)
        if numbers.size:
            self._values = np.concatenate([self._values, numbers])[-self.size :]
            self._positions = np.concatenate([self._positions, self.profile.steps.positions(numbers)])[-self.size :]
            self._comparison = None

    def compare(self) -> Comparison:
        if self._comparison is None:
            values = np.sort(self._values)
            # Bin k holds the values from edge k - 1 up to (without) edge k.
            cuts = np.concatenate([[0], values.searchsorted(self.profile.edges), [values.size]])
            self._comparison = Comparison(
                statistic="ks",
                value=self.profile.steps.ks(self._positions),
                distance_name="wasserstein",
                distance=wasserstein(self.profile.values, values),
                psi=psi(self.profile.counts, cuts[1:] - cuts[:-1]),
            )
        return self._comparison


@dataclass(frozen=True)
class CategoricalProfile:
    """A categorical column's reference: its levels and their counts (the last level is ``OTHER``)."""

    name: str
    levels: dict[str, int]
    counts: np.ndarray
    #: The levels by code, ``OTHER`` last.
    names: np.ndarray
    #: The levels a number can have (``_level`` of a finite float other than -0.0), as floats, ascending, with
    #: their codes, so that a batch of numbers finds its levels by one search instead of a ``repr`` each.
    numbers: np.ndarray
    number_codes: np.ndarray

    @classmethod
    def build(cls, name: str, levels: Sequence[str]) -> CategoricalProfile:
        names, counts = np.unique(np.asarray(levels, dtype=str), return_counts=True)
        index = {str(level): i for i, level in enumerate(names.tolist())}
        numeric = sorted((float(level), code) for level, code in index.items() if _numeric_level(level))
        return cls(
            name,
            index,
            np.append(counts, 0),
            np.asarray([*index, OTHER], dtype=object),
            np.asarray([number for number, _ in numeric] + [np.nan], dtype=float),
            np.asarray([code for _, code in numeric] + [len(index)], dtype=np.int64),
        )

    def window(self, size: int) -> CategoricalWindow:
        return CategoricalWindow(self, size)

    def encode(self, values: Sequence[FeatureValue]) -> tuple[list[str], np.ndarray]:
        """The levels of the values (the Nones, NaNs and infinities left out) and their codes.

        A batch of strings, or of ints and floats, takes one dictionary look-up
        or one search; anything mixed goes through ``_level`` value by value.

        >>> profile = CategoricalProfile.build("c", ["1.0", "2.0", "red", "-0.0"])
        >>> profile.encode([2, 1.0, None, 7, -0.0, 0.0, float("nan")])
        (['2.0', '1.0', '7.0', '-0.0', '0.0'], array([2, 1, 4, 0, 4]))
        >>> profile.encode(["red", "blue", None]), profile.encode(["red", 1, True])
        ((['red', 'blue'], array([3, 4])), (['red', '1.0', 'True'], array([3, 1, 4])))
        """
        present, kinds = _plain(values, set(map(type, values)))
        if kinds <= {int, float}:
            return self._encode_numbers(np.asarray(present, dtype=float))
        if kinds <= {str}:
            levels = cast(list[str], list(present))
        else:
            levels = [level for level in map(_level, present) if level is not None]
        other = len(self.levels)
        return levels, np.asarray([self.levels.get(level, other) for level in levels], dtype=np.int64)

    def _encode_numbers(self, numbers: np.ndarray) -> tuple[list[str], np.ndarray]:
        other = len(self.levels)
        numbers = numbers[np.isfinite(numbers)]
        found = self.numbers.searchsorted(numbers)
        codes = np.where(self.numbers[found] == numbers, self.number_codes[found], other)
        # -0.0 equals 0.0 to the search; its level is "-0.0".
        codes[(numbers == 0) & np.signbit(numbers)] = self.levels.get("-0.0", other)
        levels = self.names[codes].tolist()
        for i in np.flatnonzero(codes == other).tolist():
            levels[i] = repr(float(numbers[i]))
        return levels, codes


def _numeric_level(level: str) -> bool:
    """Whether a level is what ``_level`` makes of some number, other than -0.0 (which equals 0.0 to a search).

    >>> [_numeric_level(s) for s in ["1.0", "1", "red", "nan", "-0.0", "1e+20"]]
    [True, False, False, False, False, True]
    """
    try:
        number = float(level)
    except ValueError:
        return False
    return math.isfinite(number) and repr(number) == level and level != "-0.0"


class CategoricalWindow:
    """A categorical column's latest ``size`` levels, oldest first, and their codes (found on arrival)."""

    def __init__(self, profile: CategoricalProfile, size: int) -> None:
        self.profile = profile
        self._levels: deque[str] = deque(maxlen=size)
        self._codes = np.empty(0, dtype=np.int64)
        #: The last comparison, until a value arrives.
        self._comparison: Comparison | None = None

    def __len__(self) -> int:
        return len(self._levels)

    def __iter__(self) -> Iterator[Any]:
        """The levels oldest first, as they are stored."""
        return iter(self._levels)

    def extend(self, values: Sequence[FeatureValue]) -> None:
        levels, codes = self.profile.encode(values)
        if levels:
            self._levels.extend(levels)
            self._codes = np.concatenate([self._codes, codes])[-len(self._levels) :]
            self._comparison = None

    def compare(self) -> Comparison:
        if self._comparison is None:
            counts = np.bincount(self._codes, minlength=len(self.profile.levels) + 1)
            statistic, dof = chi2_statistic(self.profile.counts, counts)
            self._comparison = Comparison(
                statistic="chi2",
                value=statistic,
                distance_name="jensen_shannon",
                distance=jensen_shannon(self.profile.counts, counts),
                psi=psi(self.profile.counts, counts),
                dof=dof,
            )
        return self._comparison


Profile = NumericProfile | CategoricalProfile
Window = NumericWindow | CategoricalWindow


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


def check(reference: ReferenceProfile, windows: Mapping[str, Window], policy: DataDriftPolicy) -> list[FeatureDrift]:
    """Compare every full window with its reference; the p-values of the family are adjusted together."""
    names = [name for name in reference.columns if len(windows[name]) >= policy.window]
    comparisons = [windows[name].compare() for name in names]
    sizes = [len(windows[name]) for name in names]
    reference_sizes = [reference.rows[name] for name in names]
    values = np.asarray([c.value for c in comparisons], dtype=float)
    is_ks = np.asarray([c.statistic == "ks" for c in comparisons], dtype=bool)
    dof = np.asarray([c.dof for c in comparisons], dtype=float)
    pvalues = np.ones(len(names))
    if is_ks.any():
        n, m = np.asarray(reference_sizes, dtype=float), np.asarray(sizes, dtype=float)
        pvalues[is_ks] = ks_pvalues(values[is_ks], n[is_ks], m[is_ks])
    if (~is_ks).any():
        pvalues[~is_ks] = chi2_pvalues(values[~is_ks], dof[~is_ks])
    adjusted = benjamini_hochberg(pvalues)
    return [
        FeatureDrift(
            feature=name,
            statistic=c.statistic,
            value=c.value,
            p_value=p,
            p_adjusted=q,
            psi=c.psi,
            distance_name=c.distance_name,
            distance=c.distance,
            reference_rows=n_ref,
            window_rows=n,
            drifted=q <= policy.alpha and c.psi >= policy.min_psi,
        )
        for name, c, p, q, n_ref, n in zip(
            names, comparisons, pvalues.tolist(), adjusted.tolist(), reference_sizes, sizes, strict=True
        )
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
    windows: dict[str, Window] = field(default_factory=dict)
    observations: int = 0
    since_check: int = 0
    flagged: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for name, column in self.reference.columns.items():
            self.windows.setdefault(name, column.window(self.policy.window))

    def update(self, rows: Sequence[Mapping[str, FeatureValue]]) -> list[DataDriftCheck]:
        """Add rows (features, and ``PREDICTION``/``PROBABILITY`` when known); one check per ``check_every`` rows.

        A column absent from a row (or ``None``) leaves its window as it is.
        """
        checks: list[DataDriftCheck] = []
        start = 0
        while start < len(rows):
            chunk = rows[start : start + self.policy.check_every - self.since_check]
            start += len(chunk)
            # Rows come from one source at a time (feature vectors, or predictions): most columns are not in them.
            named = set().union(*chunk)
            for name, window in self.windows.items():
                if name in named:
                    window.extend(compared(name, [row.get(name) for row in chunk]))
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
        """The stored state. The windows are stored as values only; what a check needs of them is found again."""
        detector = cls(
            model_name=data["model_name"],
            version=data["version"],
            reference=reference,
            policy=policy,
            observations=data["observations"],
            since_check=data["since_check"],
            flagged=set(data["flagged"]),
        )
        for name, values in data["windows"].items():
            if name in detector.windows:
                detector.windows[name].extend(values)
        return detector
