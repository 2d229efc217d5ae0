"""How often the promotion gate promotes: equally good models (it should not) and better ones (it should).

Run with ``python -m tests.bench.bench_gate`` (``make bench`` runs it). Each
trial draws disjoint samples of one stationary stream (river's SEA, variant 0,
10 % label noise): one to train the champion, one to train the challenger, one
as the holdout, and fits both with the training service's own ``fit`` and
the estimator of ``driftloop.yaml`` (with fewer boosting rounds). The gate then decides with the policy of
``driftloop.yaml`` and with ``min_improvement: 0`` (the most permissive
setting), on the loop's smallest holdout (120 rows: 30 % of ``min_rows``) and
on a larger one. Better challengers: one trained after an abrupt drift
(SEA 0 -> 3) against the champion of the old concept, and one trained on seven
times the champion's rows of the same concept.

The old rule (accuracy on the holdout at least the champion's plus 0.01) is
scored on the same trials for comparison. Nothing is asserted: the figures are
for reading; the issue's target is a false-promotion rate of at most 5 %.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from river.datasets import synth

from driftloop.config import ModelSpec, PromotionPolicy, load_config
from driftloop.contracts.events import LabelValue
from driftloop.modeling import ModelArtifact
from driftloop.offline import TrainingRow
from driftloop.services.registry.gate import decide, metric_value
from driftloop.services.training.domain import fit

REPO = Path(__file__).resolve().parents[2]
CONFIG = load_config(REPO / "driftloop.yaml")
#: The demo's model with 50 boosting rounds instead of 200, so 200 trials take minutes, not an hour.
AGRAWAL = CONFIG.models[0].model_copy(update={"params": {**CONFIG.models[0].params, "max_iter": 50}})
SEA = AGRAWAL.model_copy(update={"features": ["x1", "x2", "x3"]})
TRAIN_ROWS = 700
HOLDOUTS = (120, 300)


def _rows(pairs: Iterable[tuple[dict[Any, Any], Any]], seed: int) -> list[TrainingRow]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        TrainingRow(f"{seed}-{i}", "e", start + timedelta(seconds=i), features, int(y))
        for i, (features, y) in enumerate(pairs)
    ]


def sea(variant: int, n: int, seed: int) -> list[TrainingRow]:
    stream = synth.SEA(variant=variant, noise=0.1, seed=seed).take(n)
    return _rows((({f"x{k + 1}": float(v) for k, v in x.items()}, y) for x, y in stream), seed)


def agrawal(function: int, n: int, seed: int) -> list[TrainingRow]:
    stream = synth.Agrawal(classification_function=function, seed=seed).take(n)
    typed = (({k: float(v) if isinstance(v, float) else int(v) for k, v in x.items()}, y) for x, y in stream)
    return _rows(typed, seed)


def model(spec: ModelSpec, rows: Sequence[TrainingRow]) -> ModelArtifact:
    return fit(spec, "bench", rows, rows).artifact


def predict(artifact: ModelArtifact, rows: Sequence[TrainingRow]) -> list[LabelValue]:
    return artifact.predict([r.features for r in rows])[0]


RULES = ("yaml", "zero", "old")


@dataclass
class Case:
    label: str
    holdout: int
    trials: int = 0
    promoted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))

    def judge(self, holdout: Sequence[TrainingRow], challenger: ModelArtifact, champion: ModelArtifact) -> None:
        rows = holdout[: self.holdout]
        labels, ours, theirs = [r.label for r in rows], predict(challenger, rows), predict(champion, rows)
        features = [r.features for r in rows]
        self.trials += 1
        for rule, policy in (
            ("yaml", CONFIG.promotion),
            ("zero", CONFIG.promotion.model_copy(update={"min_improvement": 0.0})),
        ):
            self.promoted[rule] += decide(policy, labels, ours, theirs, features=features).passed
        old_rule = metric_value("accuracy", labels, ours) >= metric_value("accuracy", labels, theirs) + 0.01
        self.promoted["old"] += old_rule

    def row(self) -> str:
        cells = [f"{self.promoted[rule] / self.trials:.1%}" for rule in RULES]
        return f"{self.label:52} {self.holdout:>7} {cells[0]:>32} {cells[1]:>18} {cells[2]:>9}"


def equally_good(seed: int, cases: Sequence[Case]) -> tuple[list[TrainingRow], list[TrainingRow], ModelArtifact]:
    """One trial of two models trained on disjoint samples of one concept: its rows, holdout and champion."""
    old = sea(0, 2 * TRAIN_ROWS + max(HOLDOUTS), seed)
    champion, holdout = model(SEA, old[:TRAIN_ROWS]), old[2 * TRAIN_ROWS :]
    peer = model(SEA, old[TRAIN_ROWS : 2 * TRAIN_ROWS])
    for case in cases:
        case.judge(holdout, peer, champion)
    return old, holdout, champion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    policy: PromotionPolicy = CONFIG.promotion
    equal = [Case("equally good (SEA): false-promotion rate", size) for size in HOLDOUTS]
    sea_drift = [Case("after drift SEA 0 -> 3: true-promotion rate", size) for size in HOLDOUTS]
    agrawal_drift = Case("after drift Agrawal 0 -> 2: true-promotion rate", HOLDOUTS[0])
    more = Case(f"{TRAIN_ROWS} against {TRAIN_ROWS // 7} rows (SEA): true-promotion rate", HOLDOUTS[1])
    started = time.perf_counter()
    for trial in range(args.trials):
        seed = 1000 + trial
        old, holdout, champion = equally_good(seed, equal)
        more.judge(holdout, champion, model(SEA, old[: TRAIN_ROWS // 7]))
        new = sea(3, TRAIN_ROWS + max(HOLDOUTS), seed + 50_000)
        retrained = model(SEA, new[:TRAIN_ROWS])
        for case in sea_drift:
            case.judge(new[TRAIN_ROWS:], retrained, champion)
        before, after = agrawal(0, TRAIN_ROWS, seed), agrawal(2, TRAIN_ROWS + HOLDOUTS[0], seed + 50_000)
        agrawal_drift.judge(after[TRAIN_ROWS:], model(AGRAWAL, after[:TRAIN_ROWS]), model(AGRAWAL, before))
    seconds = time.perf_counter() - started
    print(
        f"promotion gate, {args.trials} trials ({seconds:.0f} s): {AGRAWAL.estimator} (max_iter 50), "
        f"{TRAIN_ROWS} training rows per model; gate on {policy.metric}, {policy.confidence:.0%} one-sided "
        f"lower bound, {policy.resamples} resamples; target: false promotions at most 5 %"
    )
    configured = f"min_improvement {policy.min_improvement:g} (yaml)"
    print(f"{'case':52} {'holdout':>7} {configured:>32} {'min_improvement 0':>18} {'old rule':>9}")
    for case in (*equal, *sea_drift, agrawal_drift, more):
        print(case.row())


if __name__ == "__main__":
    main()
