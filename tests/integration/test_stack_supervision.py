"""The supervisor behind ``driftloop up``: a service killed with SIGKILL comes back; one that cannot start is shown."""

from __future__ import annotations

import io
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
from rich.console import Console

from driftloop.broker import EmbeddedBroker, free_port
from driftloop.cli.main import status_table
from driftloop.cli.stack import Stack
from driftloop.cli.supervision import RestartPolicy
from driftloop.settings import DriftloopSettings

REPO = Path(__file__).resolve().parents[2]


def _stack(broker: EmbeddedBroker, tmp_path: Path, config: Path, policy: RestartPolicy) -> Stack:
    settings = DriftloopSettings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"s{uuid.uuid4().hex[:8]}.",
        home=tmp_path / "home",
        config=config,
        kafka_session_timeout_ms=6000,
    )
    return Stack(
        settings,
        ports={"ingestion": free_port()},
        env={"DRIFTLOOP_LOG_FORMAT": "json", "DRIFTLOOP_KAFKA_SESSION_TIMEOUT_MS": "6000"},
        restart_policy=policy,
    )


def _supervise_until(stack: Stack, done: str, timeout: float = 120.0) -> str:
    """Tick as ``driftloop up`` does until the ingestion child's state starts with ``done``; returns the state."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        stack.supervise()
        state = stack.poll()["ingestion"]
        if state.startswith(done):
            break
        time.sleep(0.25)
    return state


def test_a_service_killed_with_sigkill_is_restarted_and_counted(broker: EmbeddedBroker, tmp_path: Path) -> None:
    stack = _stack(broker, tmp_path, REPO / "driftloop.yaml", RestartPolicy())
    try:
        stack.start(("ingestion",))
        stack.wait_ready()
        child = stack.children["ingestion"]
        assert child.process is not None and child.restarts == 0
        killed = child.process.pid
        os.kill(killed, signal.SIGKILL)
        child.process.wait()

        assert _supervise_until(stack, "exited").startswith("exited (-9), restarting in ")
        assert _supervise_until(stack, "ready") == "ready"
        assert child.process is not None and child.process.pid != killed
        assert child.restarts == 1 and child.supervision is not None and child.supervision.last_exit == -9
        assert httpx.get(f"{child.url}/readyz", timeout=5.0).json()["ready"] is True
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(status_table(stack, stack.poll()))
        (line,) = [line for line in console.export_text().splitlines() if " ingestion " in line]
        assert line.split("│")[3:5] == [" ready ", "        1 "]
    finally:
        stack.stop()
    assert stack.poll() == {"ingestion": "stopped"}
    stack.supervise()
    assert stack.children["ingestion"].process is None, "a child stopped on purpose must stay stopped"


def test_a_service_that_cannot_start_is_shown_as_crash_looping(broker: EmbeddedBroker, tmp_path: Path) -> None:
    policy = RestartPolicy(initial_seconds=0.1, max_seconds=0.4, crash_loop_after=3)
    stack = _stack(broker, tmp_path, tmp_path / "missing.yaml", policy)
    try:
        stack.start(("ingestion",))
        state = _supervise_until(stack, "crash-looping")
        assert state.startswith("crash-looping: exited (") and "3 times in a row" in state
        assert stack.children["ingestion"].restarts == 2
    finally:
        stack.stop()
