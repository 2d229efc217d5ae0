"""How fast the loop adapts to an abrupt drift, and how often its detectors cry wolf, on river's SEA and Agrawal.

Run with ``python -m tests.bench.bench_adapt [--broker tansu|kafka]`` (``make bench`` runs it).

1. The detectors alone, no broker, with the defaults of ``driftloop.yaml``
   (``--detectors``: each concept detector, CUSUM and ADWIN, on the same
   outcomes, side by side):
   - detection delay: monitoring's concept monitor (``ModelTrack``) fed the
     error stream of a model trained, as training trains it, on the first
     concept (SEA variant 0, Agrawal function 0); after ``PRE_DRIFT``
     labelled samples the concept changes (SEA 0 -> 3, Agrawal 0 -> 2); the
     labelled samples from the drift to the drift event, over ``--trials``
     seeds;
   - false alarms on ``--stationary`` events of the first concept: the
     concept monitor on the error stream (after an alarm a new version's
     monitor starts, as a promotion would start one) and the data-drift
     detector on the rows (features, served prediction and probability)
     against a reference built as training builds it.
2. Recovery through the real loop: the six services on a broker, the demo's
   producer (labels ``label_delay`` events late) at ``--rate`` events/s,
   an abrupt drift at ``DRIFT_AT``; the samples from the drift until the
   served accuracy over the trailing 1,000 events (read from ``predictions``
   against the true labels; windows wholly after the drift) is again within
   2 points of its level over the 1,000 events before the drift. Where those samples went is
   read from the lifecycle topics: detection, the run, the gate, the rollout.
3. The gate's false-promotion rate, from ``tests.bench.bench_gate`` with fewer trials.

The peers are those of issue 8: River's adaptive random forest recovers in
1,511 samples on SEA and 13,864 on Agrawal, a naive detect-and-refit loop in
about 2,980; the target is at most 1,500, detection within 150 labelled
samples and no false alarm in 1,000,000 stationary events. Nothing here is
asserted: the README quotes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from rich.console import Console
from rich.table import Table
from river.datasets import synth
from threadpoolctl import threadpool_limits

from driftloop.cli.demo import Demo, DemoOptions, Row, RowStream
from driftloop.cli.stack import Stack
from driftloop.config import DriftPolicy, ModelSpec, load_config
from driftloop.contracts import DriftDetected, ModelPromoted, RolloutCompleted, TrainingRunCompleted
from driftloop.modeling import ModelArtifact
from driftloop.offline import TrainingRow
from driftloop.reference import ReferenceSample
from driftloop.services.monitoring.datadrift import PREDICTION, PROBABILITY, DataDriftDetector, ReferenceProfile
from driftloop.services.monitoring.domain import ModelTrack
from driftloop.services.monitoring.join import Outcome
from driftloop.services.training.domain import fit, reference_sample, refit, time_split
from tests.bench import bench_gate
from tests.bench.bench_loop import bench_broker, start_stack

console = Console(width=150)
REPO = Path(__file__).resolve().parents[2]
CONFIG = load_config(REPO / "driftloop.yaml")

#: Labelled samples of the first concept before the drift in a detection trial, and the most after it.
PRE_DRIFT = 3000
POST_DRIFT = 3000
#: Rows the first version trains on: the demo's warm-up.
FIRST_WINDOW = 1500
#: Rows scored per step of the stationary runs: the detectors take them a batch at a time.
CHUNK = 50_000

LABEL_DELAY = 100
RECOVERY_WINDOW = 1000
RECOVERY_MARGIN = 0.02
TARGET_RECOVERY = 1500
TARGET_DETECTION = 150
PEERS = {"sea": {"arf": 1511, "naive": 2980}, "agrawal": {"arf": 13864, "naive": 2980}}

Sample = tuple[dict[str, float | int], int]


@dataclass(frozen=True)
class Stream:
    """A river generator before and after its abrupt drift, with the features as the producer sends them."""

    name: str
    model: str
    features: list[str]
    make: Callable[[bool, int], Iterator[Sample]]

    def take(self, drifted: bool, seed: int, n: int) -> list[Sample]:
        samples = self.make(drifted, seed)
        return [next(samples) for _ in range(n)]


def _sea(drifted: bool, seed: int) -> Iterator[Sample]:
    for x, y in synth.SEA(variant=3 if drifted else 0, noise=0.1, seed=seed):
        yield {f"x{k + 1}": round(float(v), 4) for k, v in x.items()}, int(y)


def _agrawal(drifted: bool, seed: int) -> Iterator[Sample]:
    """Rounded as the demo's producer rounds them."""
    for x, y in synth.Agrawal(classification_function=2 if drifted else 0, seed=seed):
        yield {k: (round(v, 2) if isinstance(v, float) else int(v)) for k, v in x.items()}, int(y)


SEA = Stream("sea", "sea-concepts", ["x1", "x2", "x3"], _sea)
AGRAWAL = Stream("agrawal", CONFIG.models[0].name, list(CONFIG.models[0].features), _agrawal)
STREAMS = (SEA, AGRAWAL)


def spec_of(stream: Stream) -> ModelSpec:
    """The model of ``driftloop.yaml``; SEA's is the same estimator on SEA's three features."""
    model = CONFIG.models[0]
    return model if stream is AGRAWAL else model.model_copy(update={"name": stream.model, "features": SEA.features})


def training_rows(samples: Sequence[Sample], tag: str) -> list[TrainingRow]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        TrainingRow(f"{tag}-{i}", f"e-{i % 500}", start + timedelta(seconds=i), dict(x), y)
        for i, (x, y) in enumerate(samples)
    ]


@dataclass(frozen=True)
class Version:
    served: ModelArtifact
    reference: ReferenceSample


def train(stream: Stream, seed: int) -> Version:
    """A first version as the training service makes one: time split, fit, refit on the window, reference."""
    spec = spec_of(stream)
    rows = training_rows(stream.take(False, seed, FIRST_WINDOW), f"train{seed}")
    train_rows, holdout = time_split(rows, CONFIG.training.holdout_fraction)
    result = fit(spec, f"bench-{seed}", train_rows, holdout)
    served = refit(spec, f"bench-{seed}", rows) if CONFIG.training.refit else result.artifact
    reference = reference_sample(
        spec, f"bench-{seed}", result.artifact, rows, holdout, CONFIG.drift.data.reference_rows
    )
    return Version(served, reference)


def detectors(both: bool) -> dict[str, DriftPolicy]:
    """The drift policy of ``driftloop.yaml`` with its detector, or with each detector in turn."""
    if not both:
        return {CONFIG.drift.detector: CONFIG.drift}
    settings = CONFIG.drift.model_dump()
    return {kind: DriftPolicy.model_validate({**settings, "detector": kind}) for kind in ("cusum", "adwin")}


def feed(track: ModelTrack, version: int, correct: Sequence[bool], start: int) -> int | None:
    """Outcomes in label order from position ``start``; the position of the first drift event, if any."""
    for i, hit in enumerate(correct):
        position = start + i
        outcome = Outcome(track.model_name, version, bool(hit), float(position), str(position), (0, position, 0))
        if track.apply(outcome) is not None:
            return position
    return None


def hits(version: Version, samples: Sequence[Sample]) -> list[bool]:
    predictions, _ = version.served.predict([x for x, _ in samples])
    return [p == y for p, (_, y) in zip(predictions, samples, strict=True)]


@dataclass
class Detection:
    stream: str
    trials: int
    #: Labelled samples from the drift to the drift event; None when it was not detected within ``POST_DRIFT``.
    delays: list[int | None] = field(default_factory=list)
    #: Trials whose monitor raised drift before the drift.
    early: int = 0

    def summary(self) -> dict[str, Any]:
        found = sorted(d for d in self.delays if d is not None)
        return {
            "median": statistics.median(found) if found else None,
            "p90": found[math.ceil(0.9 * len(found)) - 1] if found else None,
            "max": found[-1] if found else None,
            "missed": sum(d is None for d in self.delays),
            "within_target": sum(d is not None and d <= TARGET_DETECTION for d in self.delays) / len(self.delays),
            "early_alarms": self.early,
        }


def detection_delay(stream: Stream, trials: int, policies: dict[str, DriftPolicy]) -> dict[str, Detection]:
    """Each trial: a first version trained on its own seed, ``PRE_DRIFT`` samples of its concept, then the new one.

    Every detector sees the same outcomes of the same versions.
    """
    results = {name: Detection(stream.name, trials) for name in policies}
    for trial in range(trials):
        seed = 100 + trial
        version = train(stream, seed)
        before = hits(version, stream.take(False, seed + 10_000, PRE_DRIFT))
        after = hits(version, stream.take(True, seed + 20_000, POST_DRIFT))
        for name, policy in policies.items():
            result, track = results[name], ModelTrack(stream.model, policy)
            if feed(track, 1, before, 0) is not None:
                result.early += 1
                result.delays.append(None)
                continue
            found = feed(track, 1, after, PRE_DRIFT)
            result.delays.append(None if found is None else found - PRE_DRIFT + 1)
    return results


@dataclass
class FalseAlarms:
    stream: str
    events: int
    accuracy: float = 0.0
    #: Positions of each concept detector's alarms.
    concept_alarms: dict[str, list[int]] = field(default_factory=dict)
    data_checks: int = 0
    #: (position, column, p adjusted, PSI) of each data-drift finding.
    data_alarms: list[tuple[int, str, float, float]] = field(default_factory=list)
    seconds: float = 0.0


def stationary(stream: Stream, events: int, policies: dict[str, DriftPolicy]) -> FalseAlarms:
    """``events`` of the first concept through the concept detectors and the data-drift one, in batches of
    ``CHUNK``."""
    began = time.perf_counter()
    result = FalseAlarms(stream.name, events, concept_alarms={name: [] for name in policies})
    version = train(stream, 1)
    tracks = {name: ModelTrack(stream.model, policy) for name, policy in policies.items()}
    numbers = dict.fromkeys(policies, 1)
    policy = CONFIG.drift.data
    detector = DataDriftDetector(stream.model, 1, ReferenceProfile.from_sample(version.reference, policy), policy)
    samples, correct = stream.make(False, 7), 0
    for start in range(0, events, CHUNK):
        chunk = [next(samples) for _ in range(min(CHUNK, events - start))]
        predictions, probabilities = version.served.predict([x for x, _ in chunk])
        outcomes = [p == y for p, (_, y) in zip(predictions, chunk, strict=True)]
        correct += sum(outcomes)
        for name, track in tracks.items():
            offset = 0
            while (found := feed(track, numbers[name], outcomes[offset:], start + offset)) is not None:
                # A false alarm would start a run and, once promoted, a new version with a fresh monitor.
                result.concept_alarms[name].append(found)
                numbers[name] += 1
                offset = found - start + 1
        rows = [
            {**x, PREDICTION: p, PROBABILITY: q} for (x, _), p, q in zip(chunk, predictions, probabilities, strict=True)
        ]
        for check in detector.update(rows):
            result.data_checks += 1
            result.data_alarms += [(check.observations, f.feature, f.p_adjusted, f.psi) for f in check.findings]
    result.accuracy = correct / events
    result.seconds = time.perf_counter() - began
    return result


def sea_config(home: Path) -> Path:
    """``driftloop.yaml`` with SEA's dataset, view and model in place of Agrawal's; every policy as it is."""
    raw = yaml.safe_load((REPO / "driftloop.yaml").read_text())
    raw["dataset"] = {
        "name": "sea",
        "features": {name: {"type": "float", "min": 0, "max": 10} for name in SEA.features},
        "label": raw["dataset"]["label"],
        "max_event_age": raw["dataset"]["max_event_age"],
        "max_clock_skew": raw["dataset"]["max_clock_skew"],
    }
    raw["feature_views"] = [{"name": "points", "passthrough": "all"}]
    raw["models"] = [{**raw["models"][0], "name": SEA.model, "feature_view": "points", "features": SEA.features}]
    # The declared slices name Agrawal's features; SEA has no categorical feature to slice by.
    slices = raw["promotion"]["slices"]
    raw["promotion"]["slices"] = {k: v for k, v in slices.items() if k not in ("per_value_of", "defined")}
    path = home / "driftloop-sea.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_config(path)
    return path


@dataclass
class Recovery:
    stream: str
    drift_at: int
    events_sent: int = 0
    pre_drift_accuracy: float | None = None
    #: Samples from the drift until the trailing window is back within the margin; None if it never was.
    recovery: int | None = None
    #: The trailing window's lowest accuracy after the drift.
    trough: float | None = None
    #: Lifecycle events seen, each with the events sent and the newest event scored then, relative to the drift.
    timeline: list[dict[str, Any]] = field(default_factory=list)
    first_new_prediction: int | None = None
    versions: dict[int, int] = field(default_factory=dict)
    #: Every few seconds: events sent (relative to the drift) and outcomes monitoring had applied, all versions.
    monitored: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0


def recovery_scan(hits: Sequence[bool | None], drift_at: int) -> tuple[float | None, int | None, float | None]:
    """Pre-drift accuracy, samples until recovery, and the trough, from the served hits by position.

    Only windows wholly after the drift count: one that still holds old-concept
    events can look recovered by their weight alone. So the figure is at least
    ``RECOVERY_WINDOW``, as it is for any learner judged this way. The scan
    stops at the first event not yet scored.
    """
    pre = [h for h in hits[max(0, drift_at - RECOVERY_WINDOW) : drift_at] if h is not None]
    if len(pre) < RECOVERY_WINDOW // 2:
        return None, None, None
    level = sum(pre) / len(pre)
    scored = next((i for i in range(drift_at, len(hits)) if hits[i] is None), len(hits))
    values = np.asarray([bool(h) for h in hits[drift_at:scored]], dtype=float)
    if values.size < RECOVERY_WINDOW:
        return level, None, None
    accuracy = np.convolve(values, np.ones(RECOVERY_WINDOW), mode="valid") / RECOVERY_WINDOW
    back = np.flatnonzero(accuracy >= level - RECOVERY_MARGIN)
    return level, int(back[0]) + RECOVERY_WINDOW if back.size else None, float(accuracy.min())


def demo_rows(stream: Stream) -> RowStream:
    def rows(options: DemoOptions) -> Iterator[Row]:
        before, after = stream.make(False, options.seed), stream.make(True, options.seed + 1)
        for position in range(options.max_events):
            features, label = next(before if position < options.drift_at else after)
            yield Row(position, features, label)

    return rows


class RecoveryDemo(Demo):
    """The demo's producer and watcher, streaming until the served accuracy has recovered (or ``max_events``)."""

    def __init__(self, stack: Stack, options: DemoOptions, stream: Stream) -> None:
        urls = {name: child.url for name, child in stack.children.items()}
        super().__init__(stack.settings, options, urls, demo_rows(stream))
        self.timeline: list[dict[str, Any]] = []
        self.recovered: int | None = None

    def _observe(self, event: Any) -> None:
        super()._observe(event)
        lifecycle = (DriftDetected, TrainingRunCompleted, ModelPromoted, RolloutCompleted)
        if isinstance(event, lifecycle) and getattr(event, "model_name", None) == self.options.model:
            drift_at = self.options.drift_at
            entry: dict[str, Any] = {
                "event": type(event).__name__,
                "sent": self.result.events_sent - drift_at,
                "scored": None if self.newest_scored is None else self.newest_scored - drift_at,
            }
            if isinstance(event, DriftDetected):
                entry |= {"kind": event.kind, "feature": event.feature, "version": event.model_version}
            elif isinstance(event, TrainingRunCompleted):
                entry |= {"rows": event.data_window.rows, "seconds": event.duration_seconds}
            elif isinstance(event, ModelPromoted | RolloutCompleted):
                entry |= {"version": event.version}
            self.timeline.append(entry)

    def hits(self) -> list[bool | None]:
        predictions = self.result.predictions
        return [
            None if (p := predictions.get(str(row.position))) is None else p.prediction == row.label
            for row in self.rows
        ]

    def done(self) -> bool:
        """Recovered, and a little more streamed so the figure is not cut at the edge of what was scored."""
        sent = self.result.events_sent
        if sent <= self.options.drift_at or sent % 250:
            return False
        if self.recovered is None:
            self.recovered = recovery_scan(self.hits(), self.options.drift_at)[1]
        return self.recovered is not None and sent >= self.options.drift_at + self.recovered + 500


async def watch_monitoring(demo: RecoveryDemo, url: str, samples: list[tuple[int, int]]) -> None:
    """How far monitoring's outcomes trail the producer: a slow stage delays detection however good the detector."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            await asyncio.sleep(2.0)
            try:
                response = await client.get(f"{url}/v1/models/{demo.options.model}/metrics", headers=demo.headers)
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                applied = sum(v["observations"] for v in response.json()["versions"])
                samples.append((demo.result.events_sent - demo.options.drift_at, applied))


async def recovery(stream: Stream, bootstrap: str, home: Path, rate: float, drift_at: int, post: int) -> Recovery:
    """One fresh stack (SEA's on a config of its own), one drift, watched until the served accuracy is back."""
    began = time.perf_counter()
    config = sea_config(home) if stream is SEA else REPO / "driftloop.yaml"
    stack = await asyncio.to_thread(start_stack, bootstrap, home, 1, config)
    options = DemoOptions(
        model=stream.model,
        warmup=FIRST_WINDOW,
        drift_at=drift_at,
        max_events=drift_at + post,
        rate=rate,
        label_delay=LABEL_DELAY,
        timeout=(drift_at + post) / rate + 120,
    )
    demo = RecoveryDemo(stack, options, stream)
    monitored: list[tuple[int, int]] = []
    watcher = asyncio.create_task(watch_monitoring(demo, stack.children["monitoring"].url, monitored))
    try:
        await demo.run()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await asyncio.to_thread(stack.stop)
    pre, samples, trough = recovery_scan(demo.hits(), drift_at)
    new = [
        row.position
        for row in demo.rows
        if (p := demo.result.predictions.get(str(row.position))) is not None
        and demo.result.first_version is not None
        and p.model_version > demo.result.first_version
    ]
    return Recovery(
        stream=stream.name,
        drift_at=drift_at,
        events_sent=demo.result.events_sent,
        pre_drift_accuracy=pre,
        recovery=samples,
        trough=trough,
        timeline=demo.timeline,
        first_new_prediction=min(new) - drift_at if new else None,
        versions=dict(demo.result.by_version),
        monitored=monitored,
        seconds=time.perf_counter() - began,
    )


def gate(trials: int) -> dict[str, float]:
    """``bench_gate``'s equally-good case: the share of trials the configured gate promotes, per holdout size."""
    cases = [bench_gate.Case("equally good", size) for size in bench_gate.HOLDOUTS]
    for trial in range(trials):
        bench_gate.equally_good(1000 + trial, cases)
    return {str(case.holdout): case.promoted["yaml"] / case.trials for case in cases}


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(result: dict[str, Any]) -> None:
    table = Table(title=f"adaptation to an abrupt drift on {result['broker']} ({result['machine']['cpus']} cores)")
    for column, justify in (("stream", "left"), ("what", "left"), ("figure", "right"), ("peer / target", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, by_detector in result.get("detection", {}).items():
        for detector, figures in by_detector.items():
            table.add_row(
                name,
                f"{detector}: detection delay, labelled samples ({figures['trials']} drifts): median / p90 / max",
                f"{fmt(figures['median'])} / {fmt(figures['p90'])} / {fmt(figures['max'])}",
                f"<= {TARGET_DETECTION}",
            )
            table.add_row(
                "",
                "  within target; missed; alarms before the drift",
                f"{figures['within_target']:.0%}; {figures['missed']}; {figures['early_alarms']}",
                "100 %; 0; 0",
            )
    for name, figures in result.get("stationary", {}).items():
        for detector, found in figures["concept_alarms"].items():
            table.add_row(
                name,
                f"{detector}: false alarms in {figures['events']:,} stationary events, concept monitor",
                str(len(found)),
                "0",
            )
        table.add_row(
            "",
            f"  data drift ({figures['data_checks']:,} checks of every column)",
            str(len(figures["data_alarms"])),
            "0",
        )
    for name, figures in result.get("recovery", {}).items():
        peers = PEERS[name]
        level = fmt(figures["pre_drift_accuracy"], 3)
        after = figures["events_sent"] - figures["drift_at"]
        table.add_row(
            name,
            f"recovery through the loop, samples (back within {RECOVERY_MARGIN:.0%} of {level})",
            fmt(figures["recovery"]) if figures["recovery"] is not None else f"> {after:,}",
            f"ARF {peers['arf']:,}, naive {peers['naive']:,} / <= {TARGET_RECOVERY:,}",
        )
        for step in figures["timeline"]:
            extra = ", ".join(f"{k} {v}" for k, v in step.items() if k not in ("event", "sent", "scored"))
            scored = "-" if step["scored"] is None else f"{step['scored']:+,}"
            where = f"sent {step['sent']:+,}, scored {scored}"
            table.add_row("", f"  {step['event']} ({extra})", where, "")
        table.add_row(
            "",
            "  first event served by a new version",
            "-" if figures["first_new_prediction"] is None else f"{figures['first_new_prediction']:+,}",
            "",
        )
        for sent, applied in figures["monitored"][:: max(1, len(figures["monitored"]) // 8)]:
            label = f"  monitoring: outcomes applied with {sent:+,} events sent"
            behind = figures["drift_at"] + sent - FIRST_WINDOW - LABEL_DELAY - applied
            table.add_row("", label, f"{applied:,} ({behind:,} behind the labels sent)", "")
    if "gate" in result:
        for holdout, rate in result["gate"]["false_promotion"].items():
            table.add_row(
                "sea",
                f"gate: equally good models promoted, holdout {holdout} ({result['gate']['trials']} trials)",
                f"{rate:.1%}",
                "<= 5 %",
            )
    console.print(table)


def pure(args: argparse.Namespace, streams: Sequence[Stream], result: dict[str, Any]) -> None:
    """The parts with no broker, each filling its key of ``result``."""
    policies = detectors(args.detectors)
    if "detection" not in args.skip:
        result["detection"] = {}
        for stream in streams:
            console.print(f"detection delay on {stream.name}, {args.trials} drifts, {', '.join(policies)} …")
            found = detection_delay(stream, args.trials, policies)
            result["detection"][stream.name] = {
                name: {"trials": args.trials, **d.summary(), "delays": d.delays} for name, d in found.items()
            }
    if "stationary" not in args.skip:
        result["stationary"] = {}
        for stream in streams:
            console.print(f"false alarms on {stream.name}, {args.stationary:,} stationary events …")
            result["stationary"][stream.name] = asdict(stationary(stream, args.stationary, policies))
    if "gate" not in args.skip:
        console.print(f"gate on equally good models, {args.gate_trials} trials …")
        result["gate"] = {"trials": args.gate_trials, "false_promotion": gate(args.gate_trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--trials", type=int, default=30, help="drifts per stream for the detection delay")
    parser.add_argument("--stationary", type=int, default=1_000_000, help="stationary events per stream")
    parser.add_argument("--gate-trials", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--drift-at", type=int, default=4000)
    parser.add_argument("--post", type=int, default=10_000, help="events after the drift at most")
    parser.add_argument("--streams", nargs="+", choices=[s.name for s in STREAMS], default=[s.name for s in STREAMS])
    parser.add_argument("--skip", nargs="*", choices=["detection", "stationary", "recovery", "gate"], default=[])
    parser.add_argument(
        "--detectors",
        action="store_true",
        help="detection delay and false alarms of both concept detectors (cusum, adwin) side by side",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out: Path = args.out or Path(".driftloop") / "bench" / f"adapt-{args.broker}.json"
    streams = [s for s in STREAMS if s.name in args.streams]
    result: dict[str, Any] = {
        "broker": args.broker,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {
            "drift": CONFIG.drift.model_dump(mode="json"),
            "training": CONFIG.training.model_dump(mode="json"),
        },
    }
    try:
        # One OpenMP thread: on a shared machine the boosting's spinning threads make a fit twenty times slower.
        with threadpool_limits(limits=1, user_api="openmp"):
            pure(args, streams, result)
        if "recovery" not in args.skip:
            result["recovery"] = {}
            for stream in streams:
                with tempfile.TemporaryDirectory(prefix="driftloop-adapt-") as tmp:
                    home = Path(tmp)
                    console.print(f"recovery through the loop on {stream.name} at {args.rate:,.0f} events/s …")
                    with bench_broker(args.broker, home) as broker:
                        figures = asyncio.run(
                            recovery(stream, broker.bootstrap, home, args.rate, args.drift_at, args.post)
                        )
                    result["recovery"][stream.name] = asdict(figures)
    finally:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        console.print(f"written to {out}")
    report(result)


if __name__ == "__main__":
    main()
