"""Runs the embedded broker and the six services as child processes, and watches them.

``driftloop up``, ``driftloop demo`` and the end-to-end tests all use this, so
the stack a developer starts by hand is the one the tests exercise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from driftloop.broker import BrokerProcess, local_broker
from driftloop.bus import ensure_topics
from driftloop.settings import SERVICE_PORTS, DriftloopSettings

SERVICES = tuple(SERVICE_PORTS)


@dataclass
class Child:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> str:
        if self.process is None:
            return "stopped"
        if self.process.poll() is not None:
            return f"exited ({self.process.returncode})"
        return "ready" if self.ready else "starting"


@dataclass
class Stack:
    settings: DriftloopSettings
    ports: dict[str, int] = field(default_factory=lambda: dict(SERVICE_PORTS))
    env: dict[str, str] = field(default_factory=dict)
    broker: BrokerProcess | None = None
    children: dict[str, Child] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.settings.home / "logs"

    def start(self, services: tuple[str, ...] = SERVICES) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.settings.kafka_bootstrap:
            self.broker = local_broker(self.settings, self.log_dir / "broker.log").start()
            self.settings = self.settings.model_copy(update={"kafka_bootstrap": self.broker.bootstrap})
        asyncio.run(ensure_topics(self.settings))
        for name in services:
            self.children[name] = Child(name, self.ports[name], self.log_dir / f"{name}.log")
            self.spawn(name)

    def _child_env(self, child: Child) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env.update(
            DRIFTLOOP_KAFKA_BOOTSTRAP=self.settings.bootstrap,
            DRIFTLOOP_PORT=str(child.port),
            DRIFTLOOP_HOME=str(self.settings.home),
            DRIFTLOOP_CONFIG=str(self.settings.config),
            DRIFTLOOP_TOPIC_PREFIX=self.settings.topic_prefix,
        )
        for key, value in (
            ("DRIFTLOOP_DATABASE_URL", self.settings.database_url),
            ("DRIFTLOOP_ARTIFACT_URI", self.settings.artifact_uri),
        ):
            if value:
                env[key] = value
        return env

    def spawn(self, name: str) -> None:
        child = self.children[name]
        log = open(child.log_path, "ab")  # noqa: SIM115 - owned by the child process
        child.ready = False
        child.process = subprocess.Popen(
            [sys.executable, "-m", "driftloop.cli.main", "service", name],
            env=self._child_env(child),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def poll(self) -> dict[str, str]:
        """Refresh readiness of every child and return ``name -> state``."""
        with httpx.Client(timeout=1.0) as client:
            for child in self.children.values():
                if child.process is None or child.process.poll() is not None:
                    child.ready = False
                    continue
                try:
                    child.ready = client.get(f"{child.url}/readyz").status_code == 200
                except httpx.HTTPError:
                    child.ready = False
        return {name: child.state for name, child in self.children.items()}

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.poll()
            failed = {n: s for n, s in states.items() if s.startswith("exited")}
            if failed:
                raise RuntimeError(f"services exited during start: {failed}; see {self.log_dir}")
            if all(s == "ready" for s in states.values()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"services not ready after {timeout:.0f}s: {self.poll()}; see {self.log_dir}")

    def terminate(self, name: str, timeout: float = 20.0) -> None:
        self._terminate([name], timeout)

    def _terminate(self, names: list[str], timeout: float) -> None:
        """SIGTERM all at once (each shuts down gracefully in parallel), then kill what is left."""
        processes = []
        for name in names:
            child = self.children[name]
            process, child.process = child.process, None
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                processes.append(process)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self, name: str) -> None:
        self.terminate(name)
        self.spawn(name)

    def stop(self) -> None:
        self._terminate(list(self.children), timeout=20.0)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
