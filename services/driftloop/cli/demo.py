"""The demo: a drifting stream into a running stack, watched live until the loop has closed.

It plays a data producer (events and late labels to Kafka, as any client
would), asks for the first model like an operator would, and then only
watches: monitoring must notice the drift, training must retrain, the
registry's gate must promote, and deployment must serve the new version.
The result it returns is what the end-to-end test asserts on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from river.datasets import synth

from driftloop.artifacts import ArtifactStore, open_store, read_verified
from driftloop.bus.metadata import topic_partitions
from driftloop.cli.governance import session_token
from driftloop.contracts import (
    DataEvent,
    DriftDetected,
    LabelEvent,
    ModelPromoted,
    Prediction,
    RolloutCompleted,
    TrainingRunCompleted,
    parse_internal,
    utcnow,
)
from driftloop.modeling import ModelArtifact
from driftloop.settings import SERVICE_PORTS, DriftloopSettings

WATCHED = ("predictions", "drift", "training.runs", "registry.events", "deployment.events")


@dataclass(frozen=True)
class DemoOptions:
    model: str = "loan-approval"
    warmup: int = 1500
    drift_at: int = 3000
    max_events: int = 12000
    #: Predictions of the new version the demo waits for, and the fewest with which it may pass.
    eval_events: int = 800
    min_new_predictions: int = 300
    rate: float = 150.0
    #: A label follows its event this many events later, as labels do in production (they are never early).
    label_delay: int = 100
    seed: int = 7
    timeout: float = 300.0
    #: After the last event, how long to wait for predictions still on their way.
    settle_seconds: float = 30.0


@dataclass
class Row:
    position: int
    features: dict[str, Any]
    label: int


@dataclass
class DemoResult:
    drift_position: int
    events_sent: int = 0
    detection_position: int | None = None
    drift_event: DriftDetected | None = None
    first_version: int | None = None
    promoted: ModelPromoted | None = None
    run: TrainingRunCompleted | None = None
    rollout: RolloutCompleted | None = None
    promotion_position: int | None = None
    seconds_drift_to_promotion: float | None = None
    predictions: dict[str, Prediction] = field(default_factory=dict)
    #: Predictions of the demo's events received, per model version.
    by_version: Counter[int] = field(default_factory=Counter)
    events: list[Any] = field(default_factory=list)
    #: How many events had been sent when each concept-drift event was seen.
    drift_positions: list[int] = field(default_factory=list)
    #: Data-drift events (per feature) and how many events had been sent when each was seen. They start no
    #: training run unless ``drift.data.retrain`` is on, so the loop turn follows the concept drift.
    data_drifts: list[tuple[int, DriftDetected]] = field(default_factory=list)
    #: Accuracy of the old and the new champion on the same events after the promotion.
    old_on_new_concept: float | None = None
    new_on_new_concept: float | None = None

    def accuracy(self, rows: list[Row], version: int | None, positions: range) -> float | None:
        hits = [
            p.prediction == r.label
            for r in rows
            if r.position in positions
            and (p := self.predictions.get(f"{r.position}")) is not None
            and (version is None or p.model_version == version)
        ]
        return sum(hits) / len(hits) if hits else None


def agrawal_stream(options: DemoOptions) -> Iterator[Row]:
    """Agrawal loan applications; the approval rule changes abruptly at ``drift_at``."""
    before = iter(synth.Agrawal(classification_function=0, seed=options.seed))
    after = iter(synth.Agrawal(classification_function=2, seed=options.seed + 1))
    for position in range(options.max_events):
        x, y = next(before if position < options.drift_at else after)
        yield Row(position, {k: (round(v, 2) if isinstance(v, float) else int(v)) for k, v in x.items()}, int(y))


#: The rows a demo streams: ``options.max_events`` of them, the concept changing at ``options.drift_at``.
RowStream = Callable[[DemoOptions], Iterator[Row]]


class Demo:
    def __init__(
        self,
        settings: DriftloopSettings,
        options: DemoOptions,
        urls: dict[str, str] | None = None,
        stream: RowStream = agrawal_stream,
    ) -> None:
        self.settings = settings
        self.options = options
        self.stream = stream
        self.urls = urls or {name: f"http://127.0.0.1:{port}" for name, port in SERVICE_PORTS.items()}
        #: Filled in by ``run``: the operator's token the demo asks for the first model with.
        self.headers: dict[str, str] = {}
        self.tag = uuid.uuid4().hex[:8]
        self.result = DemoResult(drift_position=options.drift_at)
        self.rows: list[Row] = []
        self.unlabelled: deque[Row] = deque()
        self.drift_sent_at: float | None = None
        self.rollouts: dict[int, RolloutCompleted] = {}
        self.newest_scored: int | None = None
        self.status = "starting"

    def event_id(self, position: int) -> str:
        return f"demo-{self.tag}-{position}"

    def position(self, event_id: str) -> int | None:
        prefix = f"demo-{self.tag}-"
        return int(event_id.removeprefix(prefix)) if event_id.startswith(prefix) else None

    async def _watch(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for msg in messages:
                    self._observe(parse_internal(msg.value or b""))

    def _observe(self, event: Any) -> None:
        result = self.result
        if isinstance(event, Prediction):
            position = self.position(event.source_event_id)
            if position is not None and event.model_name == self.options.model:
                if str(position) not in result.predictions:
                    result.by_version[event.model_version] += 1
                    self.newest_scored = max(position, self.newest_scored or 0)
                result.predictions[str(position)] = event
            return
        if getattr(event, "model_name", None) != self.options.model:
            return
        result.events.append(event)
        if isinstance(event, DriftDetected) and event.kind == "data":
            result.data_drifts.append((result.events_sent, event))
            return
        if isinstance(event, DriftDetected):
            result.drift_positions.append(result.events_sent)
        if isinstance(event, DriftDetected) and result.drift_event is None and self.drift_sent_at is not None:
            result.drift_event = event
            # Where the scoring had got to when the drift was reported: the position in the stream, however far
            # the pipeline lags behind the producer. (The outcome that tipped the detector may be older: outcomes
            # of several partitions reach the detector interleaved.)
            result.detection_position = self.newest_scored if self.newest_scored is not None else result.events_sent
            self.status = "drift detected: retraining"
        elif isinstance(event, TrainingRunCompleted) and result.drift_event is not None and result.run is None:
            if event.correlation_id == result.drift_event.correlation_id:
                result.run = event
                self.status = f"run {event.run_id} done: holdout accuracy {event.metrics['accuracy']:.3f}"
        elif isinstance(event, ModelPromoted):
            if result.first_version is None:
                result.first_version = event.version
                self.status = f"v{event.version} is champion"
            elif result.drift_event is not None and event.correlation_id == result.drift_event.correlation_id:
                result.promoted = event
                result.promotion_position = result.events_sent
                if self.drift_sent_at is not None:
                    result.seconds_drift_to_promotion = time.monotonic() - self.drift_sent_at
                self.status = f"v{event.version} promoted: {event.decision.reason if event.decision else ''}"
        elif isinstance(event, RolloutCompleted):
            # Topics are read side by side: the rollout may be seen before the promotion that caused it.
            self.rollouts[event.version] = event
        if result.promoted is not None and result.rollout is None and result.promoted.version in self.rollouts:
            result.rollout = self.rollouts[result.promoted.version]
            self.status = f"deployment serves v{result.rollout.version}"

    async def _consumer(self) -> AIOKafkaConsumer:
        tps = await topic_partitions(self.settings.bootstrap, [self.settings.topic(t) for t in WATCHED])
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap, enable_auto_commit=False)
        await consumer.start()
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        return consumer

    async def _send(self, producer: AIOKafkaProducer, row: Row) -> None:
        """The row's event, and the labels now ``label_delay`` events old."""
        event = DataEvent(
            event_id=self.event_id(row.position),
            entity_id=f"applicant-{row.position % 500}",
            event_time=utcnow(),
            features=row.features,
        )
        await producer.send(
            self.settings.topic("events.raw"), event.model_dump_json().encode(), key=event.entity_id.encode()
        )
        self.unlabelled.append(row)
        while len(self.unlabelled) > self.options.label_delay:
            await self._send_label(producer, self.unlabelled.popleft())

    async def _send_label(self, producer: AIOKafkaProducer, row: Row) -> None:
        event_id = self.event_id(row.position)
        label = LabelEvent(event_id=event_id, label=row.label, label_time=utcnow())
        await producer.send(self.settings.topic("labels"), label.model_dump_json().encode(), key=event_id.encode())

    async def _send_labels(self, producer: AIOKafkaProducer) -> None:
        """Every label still held back: before the first training, and once the stream ends."""
        while self.unlabelled:
            await self._send_label(producer, self.unlabelled.popleft())

    async def _first_model(self, client: httpx.AsyncClient) -> None:
        self.status = "training the first model"
        response = await client.post(f"{self.urls['training']}/v1/models/{self.options.model}/retrain", json={})
        response.raise_for_status()
        deadline = time.monotonic() + self.options.timeout
        while time.monotonic() < deadline:
            served = await client.get(f"{self.urls['deployment']}/v1/deployments/{self.options.model}")
            if served.status_code == 200:
                self.status = f"v{served.json()['version']} serves"
                return
            await asyncio.sleep(0.5)
        raise TimeoutError("the first model was not deployed in time")

    def done(self) -> bool:
        """The new version has served enough of the stream to judge it, as seen on ``predictions``."""
        r = self.result
        return (
            r.rollout is not None
            and r.promoted is not None
            and r.by_version[r.promoted.version] >= (self.options.eval_events)
        )

    def failures(self) -> list[str]:
        """Why the loop did not close; empty when it did. The demo passes only on what it saw."""
        r, o = self.result, self.options
        problems = []
        if r.drift_event is None:
            problems.append("no drift event after the drift")
        if r.promoted is None:
            problems.append("no new version was promoted")
        elif r.rollout is None:
            problems.append(f"v{r.promoted.version} was promoted but never rolled out")
        served = r.by_version[r.promoted.version] if r.promoted else 0
        if served < o.min_new_predictions:
            problems.append(f"{served} predictions of the new version seen, fewer than {o.min_new_predictions}")
        return problems

    def compare(self, store: ArtifactStore, artifact_uri: str, artifact_sha256: str | None) -> None:
        """Score the events the new champion served after its promotion with the old champion too."""
        r = self.result
        if r.promoted is None:
            return
        served = [
            (row, prediction)
            for row in self.rows
            if (prediction := r.predictions.get(str(row.position))) and prediction.model_version == r.promoted.version
        ]
        if not served:
            return
        old = ModelArtifact.from_bytes(read_verified(store, artifact_uri, artifact_sha256))
        old_predictions, _ = old.predict([row.features for row, _ in served])
        r.old_on_new_concept = sum(p == row.label for p, (row, _) in zip(old_predictions, served, strict=True)) / len(
            served
        )
        r.new_on_new_concept = sum(p.prediction == row.label for row, p in served) / len(served)

    async def old_champion(self) -> tuple[str, str | None] | None:
        """URI and checksum of the first version's artifact, as the registry recorded them."""
        async with httpx.AsyncClient(timeout=10.0, headers=self.headers) as client:
            response = await client.get(f"{self.urls['registry']}/v1/models/{self.options.model}/versions")
        versions = response.json() if response.status_code == 200 else []
        first = next((v for v in versions if v["version"] == self.result.first_version), None)
        return (first["artifact_uri"], first.get("artifact_sha256")) if first else None

    async def run(
        self,
        live: Live | None = None,
        progress: Progress | None = None,
        hooks: dict[int, Callable[[], Awaitable[None]]] | None = None,
    ) -> DemoResult:
        token = await asyncio.to_thread(session_token, self.settings)
        self.headers = {"Authorization": f"Bearer {token}"}
        consumer = await self._consumer()
        watcher = asyncio.create_task(self._watch(consumer))
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap, linger_ms=5)
        await producer.start()
        task = progress.add_task("events", total=self.options.max_events) if progress else None
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=10.0, headers=self.headers) as client:
                for row in self.stream(self.options):
                    if row.position == self.options.warmup:
                        await self._send_labels(producer)
                        await producer.flush()
                        await self._first_model(client)
                        started = time.monotonic() - row.position / self.options.rate
                    if hooks and row.position in hooks:
                        await producer.flush()
                        paused = time.monotonic()
                        await hooks[row.position]()
                        started += time.monotonic() - paused
                    if row.position == self.options.drift_at:
                        self.drift_sent_at = time.monotonic()
                        self.status = "concept drift in the stream"
                    self.rows.append(row)
                    await self._send(producer, row)
                    self.result.events_sent = row.position + 1
                    if progress is not None and task is not None:
                        progress.update(task, completed=self.result.events_sent)
                    if live is not None and row.position % 50 == 0:
                        live.refresh()
                    if self.done() or time.monotonic() - started > self.options.timeout:
                        break
                    ahead = row.position / self.options.rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                await self._send_labels(producer)
                await producer.flush()
                # Predictions trail the events: give the new version time to show up on the stream.
                self.status = "waiting for the new version's predictions"
                settle = time.monotonic() + self.options.settle_seconds
                while not self.done() and time.monotonic() < settle:
                    await asyncio.sleep(0.25)
                    if live is not None:
                        live.refresh()
        finally:
            await producer.stop()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await consumer.stop()
        if (old := await self.old_champion()) is not None:
            self.compare(open_store(self.settings), *old)
        return self.result

    def board(self) -> Table:
        r = self.result
        n = r.events_sent
        table = Table.grid(padding=(0, 2))
        table.add_row("events sent", f"{n} (drift at {self.options.drift_at})")
        recent = list(r.predictions.items())[-300:]
        hits = [p.prediction == self.rows[int(position)].label for position, p in recent]
        newest = self.newest_scored
        table.add_row("accuracy, last 300 predictions", fmt(sum(hits) / len(hits) if hits else None))
        table.add_row("pipeline lag", "-" if newest is None else f"{n - 1 - newest} events")
        table.add_row("drift detected", "-" if r.detection_position is None else f"at event {r.detection_position}")
        table.add_row("training run", "-" if r.run is None else f"{r.run.run_id} ({r.run.data_window.rows} rows)")
        table.add_row(
            "promoted", "-" if r.promoted is None else f"v{r.promoted.version} at event {r.promotion_position}"
        )
        table.add_row("status", self.status)
        return table


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary(demo: Demo) -> Table:
    r, rows, o = demo.result, demo.rows, demo.options
    table = Table(title="driftloop demo: summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("drift injected at event", str(o.drift_at))
    table.add_row("drift detected at event (newest scored then)", str(r.detection_position))
    table.add_row(
        "events from drift to detection",
        "-" if r.detection_position is None else str(r.detection_position - o.drift_at),
    )
    table.add_row(
        "seconds from drift to promotion",
        "-" if r.seconds_drift_to_promotion is None else f"{r.seconds_drift_to_promotion:.1f}",
    )
    old = r.first_version
    new = r.promoted.version if r.promoted else None
    table.add_row(f"accuracy of v{old} before drift", fmt(r.accuracy(rows, old, range(o.warmup, o.drift_at))))
    table.add_row(
        f"accuracy of v{old} after drift",
        fmt(r.accuracy(rows, old, range(o.drift_at, r.events_sent))),
    )
    if new is not None:
        table.add_row(f"predictions of v{new} seen", str(r.by_version[new]))
        table.add_row(
            f"accuracy of v{new} after promotion",
            fmt(r.accuracy(rows, new, range(o.drift_at, r.events_sent))),
        )
    if r.old_on_new_concept is not None:
        table.add_row(f"same events: v{old} / v{new}", f"{fmt(r.old_on_new_concept)} / {fmt(r.new_on_new_concept)}")
    table.add_row("correlation id of the loop turn", r.drift_event.correlation_id if r.drift_event else "-")
    return table


async def run_demo(
    settings: DriftloopSettings,
    options: DemoOptions,
    urls: dict[str, str] | None = None,
    show: bool = True,
    hooks: dict[int, Callable[[], Awaitable[None]]] | None = None,
) -> Demo:
    demo = Demo(settings, options, urls)
    if not show:
        await demo.run(hooks=hooks)
        return demo
    progress = Progress(TextColumn("streaming"), BarColumn(), MofNCompleteColumn())

    class View:
        def __rich__(self) -> Group:
            return Group(progress, Panel(demo.board(), title="the loop"))

    with Live(View(), refresh_per_second=4) as live:
        await demo.run(live, progress)
    return demo
