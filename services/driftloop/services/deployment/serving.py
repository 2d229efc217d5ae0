"""The REST scoring path: where a batch is scored, how concurrent requests share a model call, how predictions leave.

A request's time goes to three places: the model call, the event loop's own
work (parsing, building the predictions), and waiting for the broker. The
model call is made once per batch (``Scorer``); the broker wait is taken off
the response unless ``prediction_acks=wait`` asks for it; and concurrent
requests may share one model call, since a tree ensemble scores eight rows
in about the time it scores one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from driftloop.bus import Bus
from driftloop.contracts import Prediction
from driftloop.contracts.events import Features, LabelValue
from driftloop.logging import get_logger
from driftloop.services.deployment.domain import Served
from driftloop.services.deployment.metrics import BATCH_ROWS, PUBLISH_FAILURES

log = get_logger(__name__)

Scores = tuple[list[LabelValue], list[float | None]]


class PublishFailed(Exception):
    """The broker did not take every prediction of a request."""


class PredictionLog:
    """Publishes REST predictions to ``predictions``, acknowledged before the response or after it.

    With ``async`` the sends run in tasks kept here until the broker answers:
    a failure is logged and counted in
    ``driftloop_prediction_publish_failures_total``, and ``drain`` (called at
    shutdown, before the producer stops) waits for whatever is still in flight.
    """

    def __init__(self, bus: Bus, acks: Literal["wait", "async"]) -> None:
        self.bus = bus
        self.acks = acks
        self._sending: set[asyncio.Task[None]] = set()

    async def record(self, predictions: Sequence[Prediction]) -> None:
        if self.acks == "wait":
            await self._send(predictions)
            return
        task = asyncio.create_task(self._send(predictions))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    async def _send(self, predictions: Sequence[Prediction]) -> None:
        results = await asyncio.gather(
            *(self.bus.publish(p, p.source_event_id) for p in predictions), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            PUBLISH_FAILURES.labels(predictions[0].model_name).inc(len(failures))
            raise PublishFailed(f"{len(failures)} of {len(predictions)} predictions not published: {failures[0]!r}")

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("predictions not published", error=str(exc))

    @property
    def in_flight(self) -> int:
        return len(self._sending)

    async def drain(self) -> None:
        await asyncio.gather(*self._sending, return_exceptions=True)


@dataclass
class Scoring:
    """Scores in place below ``thread_rows`` rows and in a worker thread from there on."""

    thread_rows: int

    async def __call__(self, served: Served, rows: Sequence[Features]) -> Scores:
        BATCH_ROWS.observe(len(rows))
        if len(rows) >= self.thread_rows:
            return await asyncio.to_thread(served.artifact.predict, rows)
        return served.artifact.predict(rows)


@dataclass
class _Request:
    served: Served
    rows: Sequence[Features]
    result: asyncio.Future[Scores]


@dataclass
class MicroBatcher:
    """Scores the requests that queued while the previous model call ran, together, up to ``max_rows`` rows.

    Requests for different versions (a hot swap in between) are scored by
    their own version: a batch is split by the ``Served`` each request
    resolved, so no response reports a version that did not score it.
    """

    score: Scoring
    max_rows: int
    max_wait: float
    _queue: asyncio.Queue[_Request] = field(default_factory=asyncio.Queue)

    async def __call__(self, served: Served, rows: Sequence[Features]) -> Scores:
        result: asyncio.Future[Scores] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(served, rows, result))
        return await result

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size, deadline = len(batch[0].rows), loop.time() + self.max_wait
            while size < self.max_rows:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        request = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    request = self._queue.get_nowait()
                batch.append(request)
                size += len(request.rows)
            await self._score(batch)

    async def _score(self, batch: list[_Request]) -> None:
        by_version: dict[int, list[_Request]] = {}
        for request in batch:
            by_version.setdefault(id(request.served), []).append(request)
        for requests in by_version.values():
            rows = [row for request in requests for row in request.rows]
            try:
                labels, probabilities = await self.score(requests[0].served, rows)
            except Exception as exc:
                for request in requests:
                    if not request.result.done():
                        request.result.set_exception(exc)
                continue
            start = 0
            for request in requests:
                end = start + len(request.rows)
                if not request.result.done():
                    request.result.set_result((labels[start:end], probabilities[start:end]))
                start = end


@dataclass
class Serving:
    """What a REST prediction goes through, as the settings chose it."""

    score: Scoring | MicroBatcher
    log: PredictionLog

    @classmethod
    def configure(
        cls, bus: Bus, acks: Literal["wait", "async"], thread_rows: int, batch_rows: int, batch_wait_ms: float
    ) -> Serving:
        scoring = Scoring(thread_rows)
        score: Scoring | MicroBatcher = scoring
        if batch_rows > 1:
            score = MicroBatcher(scoring, batch_rows, batch_wait_ms / 1000)
        return cls(score, PredictionLog(bus, acks))
