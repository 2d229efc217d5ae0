"""The demo passes only on what it saw: the drift, the promotion, the rollout and the new version serving."""

from __future__ import annotations

from driftloop.cli.demo import Demo, DemoOptions
from driftloop.contracts import DriftDetected, ModelPromoted, RolloutCompleted
from driftloop.settings import DriftloopSettings

MODEL = "loan-approval"


def _demo() -> Demo:
    demo = Demo(DriftloopSettings(), DemoOptions(model=MODEL, eval_events=500, min_new_predictions=300))
    demo.result.drift_event = DriftDetected(
        model_name=MODEL, model_version=1, kind="concept", detector="cusum", observations=900, window=100
    )
    demo.result.promoted = ModelPromoted(
        model_name=MODEL, version=2, previous_version=1, artifact_uri="file:///a", actor="gate"
    )
    demo.result.rollout = RolloutCompleted(
        model_name=MODEL, version=2, previous_version=1, strategy="direct", instance="r1"
    )
    demo.result.by_version.update({1: 4000})
    return demo


def test_a_promotion_whose_version_never_serves_fails_the_demo() -> None:
    demo = _demo()
    assert not demo.done()
    assert demo.failures() == ["0 predictions of the new version seen, fewer than 300"]


def test_the_demo_passes_once_enough_predictions_of_the_new_version_were_seen() -> None:
    demo = _demo()
    demo.result.by_version[2] = 299
    assert demo.failures() and not demo.done()
    demo.result.by_version[2] = 300
    assert demo.failures() == [] and not demo.done()
    demo.result.by_version[2] = 500
    assert demo.done()


def test_no_drift_and_no_promotion_are_each_named() -> None:
    demo = _demo()
    demo.result.drift_event = None
    demo.result.promoted = None
    assert demo.failures() == [
        "no drift event after the drift",
        "no new version was promoted",
        "0 predictions of the new version seen, fewer than 300",
    ]
    demo = _demo()
    demo.result.rollout = None
    demo.result.by_version[2] = 400
    assert demo.failures() == ["v2 was promoted but never rolled out"]
