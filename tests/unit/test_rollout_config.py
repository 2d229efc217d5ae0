"""The rollout section of driftloop.yaml: direct by default, per model by override, and errors that name the field."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from driftloop.config import DriftloopConfig, RolloutPolicy, load_config
from driftloop.rollout import Stage, stages

CONFIG = Path(__file__).resolve().parents[2] / "driftloop.yaml"
BASE: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
MODEL = BASE["models"][0]["name"]


def _config(rollout: dict[str, Any] | None = None, model_rollout: dict[str, Any] | None = None) -> DriftloopConfig:
    raw = copy.deepcopy(BASE)
    raw.pop("rollout", None)
    if rollout is not None:
        raw["rollout"] = rollout
    if model_rollout is not None:
        raw["models"][0]["rollout"] = model_rollout
    return DriftloopConfig.model_validate(raw)


def _error_locations(rollout: dict[str, Any] | None = None, model_rollout: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        _config(rollout, model_rollout)
    return [".".join(str(part) for part in error["loc"]) for error in caught.value.errors()]


def test_the_shipped_config_rolls_out_directly_and_so_does_one_without_a_rollout_section() -> None:
    for config in (load_config(CONFIG), _config()):
        assert config.rollout.strategy == "direct"
        assert config.rollout_for(MODEL).strategy == "direct"
        assert stages(config.rollout_for(MODEL)) == ()


def test_the_former_section_of_only_a_strategy_still_reads() -> None:
    assert _config({"strategy": "direct"}).rollout == RolloutPolicy()


def test_canary_steps_are_bare_percents_or_stages_with_their_own_duration_and_outcomes() -> None:
    config = _config(
        {
            "strategy": "canary",
            "min_duration": "PT5M",
            "min_outcomes": 300,
            "steps": [5, {"percent": 25, "min_outcomes": 800}, {"percent": 50, "min_duration": "PT30M"}, 100],
        }
    )
    assert stages(config.rollout_for(MODEL)) == (
        Stage(5.0, timedelta(minutes=5), 300),
        Stage(25.0, timedelta(minutes=5), 800),
        Stage(50.0, timedelta(minutes=30), 300),
    )


def test_the_other_strategies_have_one_stage_each() -> None:
    def only(strategy: str, **extra: Any) -> Stage:
        (stage,) = stages(RolloutPolicy.model_validate({"strategy": strategy, "min_outcomes": 150, **extra}))
        return stage

    assert only("shadow") == Stage(0.0, timedelta(minutes=2), 150, shadowed=True)
    assert only("blue_green", min_duration="PT10M") == Stage(100.0, timedelta(minutes=10), 150, shadowed=True)
    assert only("ab", split=20, budget=4000) == Stage(20.0, timedelta(minutes=2), 150, budget=4000)


def test_a_model_overrides_the_fields_it_sets_and_keeps_the_rest_of_the_top_level() -> None:
    config = _config(
        {"strategy": "direct", "steps": [10, 50], "margin": 0.03, "max_p99_ms": 100},
        {"strategy": "canary", "alpha": 0.01},
    )
    own = config.rollout_for(MODEL)
    assert (own.strategy, own.alpha, own.margin, own.max_p99_ms) == ("canary", 0.01, 0.03, 100)
    assert [s.percent for s in own.steps] == [10, 50]
    assert config.rollout.strategy == "direct"


@pytest.mark.parametrize(
    ("rollout", "location"),
    [
        ({"strategy": "linear"}, "rollout.strategy"),
        ({"steps": [5, 50, 25]}, "rollout.steps"),
        ({"steps": [5, 5, 100]}, "rollout.steps"),
        ({"steps": [100]}, "rollout.steps"),
        ({"steps": []}, "rollout.steps"),
        ({"steps": [5, 150]}, "rollout.steps.1.percent"),
        ({"steps": [{"percent": 5, "min_outcomes": 0}]}, "rollout.steps.0.min_outcomes"),
        ({"margin": 0}, "rollout.margin"),
        ({"alpha": 0.7}, "rollout.alpha"),
        ({"split": 100}, "rollout.split"),
        ({"budget": 1}, "rollout.budget"),
        ({"max_p99_ms": -5}, "rollout.max_p99_ms"),
        ({"max_error_rate": 1.5}, "rollout.max_error_rate"),
        ({"min_duration": "two minutes"}, "rollout.min_duration"),
        ({"stpes": [5, 100]}, "rollout.stpes"),
    ],
)
def test_a_bad_rollout_names_its_field(rollout: dict[str, Any], location: str) -> None:
    assert location in _error_locations(rollout)


def test_a_bad_rollout_of_a_model_names_the_model_and_field() -> None:
    assert "models.0.rollout.strategy" in _error_locations(model_rollout={"strategy": "big_bang"})


def test_the_steps_error_says_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match=r"percents must increase .*\[5\.0, 50\.0, 25\.0\]"):
        RolloutPolicy.model_validate({"steps": [5, 50, 25]})
