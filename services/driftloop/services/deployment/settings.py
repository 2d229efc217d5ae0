from __future__ import annotations

from typing import Literal

from pydantic import Field

from driftloop.settings import ServiceSettings


class DeploymentSettings(ServiceSettings):
    service: str = "deployment"
    #: How long start-up may take to read the registry's history before the service gives up loudly.
    catch_up_timeout_seconds: float = 120.0
    #: ``wait``: a REST response leaves once the broker has every prediction it reports, and a failed
    #: publish fails the request. ``async``: the predictions are handed to the producer and the
    #: response leaves at once; a failed publish is logged and counted, and shutdown waits for the rest.
    prediction_acks: Literal["wait", "async"] = "async"
    #: Batches of at least this many rows are scored in a worker thread, so the event loop keeps
    #: serving; smaller ones are scored in place, where the thread hop would cost more than it frees.
    predict_thread_rows: int = Field(default=64, ge=1)
    #: Above 1, concurrent REST requests are scored together in one model call of up to this many rows;
    #: 0 or 1 scores each request alone. A tree ensemble scores 8 rows in about the time of one, and 800
    #: in half the time of eight calls of 100 (its 200 trees cost a fixed ~1 ms a call), so on the
    #: benchmark (8 connections) batching served 3x the requests of one call each at one row, and 1,024
    #: rows served a third more than 256 at a hundred rows.
    predict_batch_rows: int = Field(default=1024, ge=0)
    #: How long a micro-batch waits for more requests once it has one; 0 takes only what already queued.
    predict_batch_wait_ms: float = Field(default=1.0, ge=0)
