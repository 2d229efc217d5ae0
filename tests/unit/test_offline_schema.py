"""The column types the offline store writes come from the dataset schema in ``driftloop.yaml``."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftloop.config import load_config
from driftloop.offline import RESERVED, view_feature_types

ROOT = Path(__file__).resolve().parents[2]


def test_a_view_declares_its_passthrough_features_with_their_dataset_types_and_its_aggregates_as_floats() -> None:
    config = load_config(ROOT / "driftloop.yaml")
    types = view_feature_types(config, "applications")
    assert types == {
        "salary": "float",
        "commission": "float",
        "age": "int",
        "elevel": "int",
        "car": "int",
        "zipcode": "int",
        "hvalue": "float",
        "hyears": "int",
        "loan": "float",
        "entity_count": "float",
        "entity_mean_loan": "float",
    }
    assert not RESERVED.intersection(types), "no shipped feature clashes with a column of the store"


def test_an_unknown_view_is_refused() -> None:
    with pytest.raises(KeyError):
        view_feature_types(load_config(ROOT / "driftloop.yaml"), "nope")
