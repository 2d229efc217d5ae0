"""What a model version was built on, kept beside its artifact so monitoring can compare the live stream with it.

Training writes one ``reference.json`` per run: a bounded uniform sample of
the window's feature values (the baseline of data drift), and the holdout's
predictions with their probabilities and correctness (the baseline of
prediction drift, and the data the probabilities are calibrated on for
accuracy estimation). It is JSON, so reading it runs no code, and any tool
can read it.

The calibration is an isotonic map from the served probability (that of the
predicted class) to the probability that the prediction is right, fitted on
the holdout as NannyML's CBPE fits it on its reference period. It is stored
as the fitted step points and applied by linear interpolation, which is what
``IsotonicRegression.predict`` computes, so monitoring needs numpy only.

>>> calibration = Calibration.fit([0.6, 0.7, 0.8, 0.9], [False, True, False, True])
>>> calibration.apply([0.5, 0.65, 0.95]).round(2).tolist()
[0.0, 0.25, 1.0]
>>> Calibration.from_dict(calibration.to_dict()) == calibration
True
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sklearn.isotonic import IsotonicRegression

from driftloop.contracts.events import FeatureValue, LabelValue

FORMAT = "driftloop.reference.v1"


@dataclass(frozen=True)
class Calibration:
    """A non-decreasing map from a served probability to the chance the prediction is right.

    Besides the map it keeps the pooled blocks it was fitted from: where each
    starts, its value and how many holdout rows it pooled. A block of ten
    rows knows its value far less well than one of five hundred, and an
    estimate made where the holdout was thin must say so (``variance``).
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    block_start: tuple[float, ...] = ()
    block_value: tuple[float, ...] = ()
    block_rows: tuple[int, ...] = ()

    @classmethod
    def identity(cls) -> Calibration:
        """Takes the model's probabilities at their word: for a version without a holdout to calibrate on."""
        return cls(x=(0.0, 1.0), y=(0.0, 1.0))

    @classmethod
    def fit(cls, probabilities: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray) -> Calibration:
        if len(probabilities) < 2:
            return cls.identity()
        p = np.asarray(probabilities, dtype=float)
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        fitted = model.fit(p, np.asarray(correct, dtype=float)).predict(p)
        # Pooled adjacent violators leave increasing block values, so each distinct value is one block.
        values, rows = np.unique(fitted, return_counts=True)
        starts = np.asarray([p[fitted == v].min() for v in values])
        return cls(
            x=tuple(model.X_thresholds_.tolist()),
            y=tuple(model.y_thresholds_.tolist()),
            block_start=tuple(starts.tolist()),
            block_value=tuple(values.tolist()),
            block_rows=tuple(rows.tolist()),
        )

    def apply(self, probabilities: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.asarray(np.interp(np.asarray(probabilities, dtype=float), self.x, self.y), dtype=float)

    def variance(self, probabilities: Sequence[float] | np.ndarray) -> float:
        """The variance of ``apply(probabilities).mean()`` that comes from the holdout being a sample.

        Rows in one block share its error, so a block's binomial variance is
        weighted by the square of its share of the rows. A block's value is
        shrunk towards 1/2 (adding one right and one wrong) first, so a block
        with every prediction right is not taken as certain.
        """
        if not self.block_rows:
            return 0.0
        p = np.asarray(probabilities, dtype=float)
        blocks = np.clip(np.searchsorted(self.block_start, p, side="right") - 1, 0, len(self.block_rows) - 1)
        share = np.bincount(blocks, minlength=len(self.block_rows)) / p.size
        rows = np.asarray(self.block_rows, dtype=float)
        value = (np.asarray(self.block_value) * rows + 1) / (rows + 2)
        return float(np.sum(share**2 * value * (1 - value) / rows))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "isotonic",
            "x": list(self.x),
            "y": list(self.y),
            "blocks": {"start": list(self.block_start), "value": list(self.block_value), "rows": list(self.block_rows)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        blocks = data.get("blocks", {})
        return cls(
            x=tuple(float(v) for v in data["x"]),
            y=tuple(float(v) for v in data["y"]),
            block_start=tuple(float(v) for v in blocks.get("start", ())),
            block_value=tuple(float(v) for v in blocks.get("value", ())),
            block_rows=tuple(int(v) for v in blocks.get("rows", ())),
        )


@dataclass(frozen=True)
class ReferenceSample:
    """Feature columns of the training window (sampled) and the holdout's predictions, column by column."""

    model_name: str
    run_id: str
    features: dict[str, list[FeatureValue]]
    predictions: list[LabelValue] = field(default_factory=list)
    probabilities: list[float | None] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    calibration: Calibration = field(default_factory=Calibration.identity)
    window_rows: int = 0

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT,
                "model_name": self.model_name,
                "run_id": self.run_id,
                "window_rows": self.window_rows,
                "features": self.features,
                "holdout": {
                    "prediction": self.predictions,
                    "probability": self.probabilities,
                    "correct": self.correct,
                },
                "calibration": self.calibration.to_dict(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceSample:
        document = orjson.loads(data)
        if document.get("format") != FORMAT:
            raise ValueError(f"not a driftloop reference sample: format {document.get('format')!r}")
        holdout = document["holdout"]
        return cls(
            model_name=document["model_name"],
            run_id=document["run_id"],
            window_rows=document["window_rows"],
            features=document["features"],
            predictions=holdout["prediction"],
            probabilities=holdout["probability"],
            correct=holdout["correct"],
            calibration=Calibration.from_dict(document["calibration"]),
        )


def sample_indices(rows: int, size: int, seed: str) -> np.ndarray:
    """A uniform sample of ``size`` of ``rows`` positions, in order, the same for the same seed.

    >>> sample_indices(5, 10, "run").tolist()
    [0, 1, 2, 3, 4]
    >>> (sample_indices(1000, 3, "run") == sample_indices(1000, 3, "run")).all()
    np.True_
    """
    if rows <= size:
        return np.arange(rows)
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    return np.sort(rng.choice(rows, size=size, replace=False))


def feature_columns(
    rows: Sequence[Mapping[str, FeatureValue]], names: Sequence[str], indices: np.ndarray
) -> dict[str, list[FeatureValue]]:
    """The chosen rows' values of each feature, as columns (absent values are ``None``)."""
    return {name: [rows[i].get(name) for i in indices.tolist()] for name in names}
