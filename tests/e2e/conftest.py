"""The stack the end-to-end tests run the loop on: six services as processes, as ``driftloop up`` starts them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.broker import free_port
from driftloop.cli.stack import SERVICES, Stack
from driftloop.settings import DriftloopSettings
from tests.fixtures.kafka import Broker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(broker: Broker, tmp_path: Path) -> Iterator[Stack]:
    settings = DriftloopSettings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"e2e{uuid.uuid4().hex[:8]}.",
        home=tmp_path / "home",
        config=REPO / "driftloop.yaml",
    )
    stack = Stack(settings, ports={name: free_port() for name in SERVICES}, env={"DRIFTLOOP_LOG_FORMAT": "json"})
    try:
        stack.start()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()
