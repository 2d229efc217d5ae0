"""Runs the embedded broker and the six services as child processes, and watches them.

``driftloop up``, ``driftloop demo`` and the end-to-end tests all use this, so
the stack a developer starts by hand is the one the tests exercise.

A service may run as several replicas. Replica 0 is the child named after
the service (``children["training"]``), replica ``k`` is ``training#k``; each
listens on its own port (the service's port plus ``10 * k`` unless ``ports``
names that child) under its own instance id, and all replicas of a service
join the service's consumer group, so Kafka spreads the partitions over them.

``supervise`` (called by ``driftloop up`` on every refresh) restarts a child
that exited without being asked to, after the back-off of
``driftloop.cli.supervision``; a child stopped through ``terminate`` or
``stop`` stays stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from driftloop.broker import BrokerProcess, local_broker
from driftloop.bus import ensure_topics
from driftloop.cli.governance import local_admin_token
from driftloop.cli.supervision import RestartPolicy, Supervision
from driftloop.logging import get_logger
from driftloop.settings import REPLICA_PORT_STEP, SERVICE_PORTS, DriftloopSettings

SERVICES = tuple(SERVICE_PORTS)
log = get_logger(__name__)


def child_name(service: str, replica: int) -> str:
    """Replica 0 keeps the service's own name, so a one-replica stack reads as before."""
    return service if replica == 0 else f"{service}#{replica}"


def parse_replicas(values: list[str]) -> dict[str, int]:
    """``["2", "training=1"]`` → replicas per service: a bare number sets every service, later values win."""
    replicas = dict.fromkeys(SERVICES, 1)
    for value in values:
        service, _, count = value.rpartition("=")
        if service and service not in SERVICES:
            raise ValueError(f"unknown service {service!r} in {value!r}; choose from {', '.join(SERVICES)}")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{value!r}: the number of replicas must be a whole number of at least 1")
        for name in [service] if service else SERVICES:
            replicas[name] = int(count)
    return replicas


@dataclass
class Child:
    name: str
    port: int
    log_path: Path
    service: str = ""
    replica: int = 0
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    #: Ready at least once since it was spawned: not ready again means stuck, not starting.
    was_ready: bool = False
    supervision: Supervision | None = None

    def __post_init__(self) -> None:
        self.service = self.service or self.name

    @property
    def instance(self) -> str:
        """The instance id the child runs under: unique among live replicas, the same after a restart."""
        return f"{socket.gethostname()}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def restarts(self) -> int:
        return self.supervision.restarts if self.supervision else 0

    def state(self, policy: RestartPolicy, now: float) -> str:
        if self.process is None:
            return "stopped"
        if self.process.poll() is not None:
            if self.supervision is not None and self.supervision.restart_at is not None:
                return self.supervision.describe(now, policy)
            return f"exited ({self.process.returncode})"
        if self.ready:
            return "ready"
        return "not ready" if self.was_ready else "starting"


@dataclass
class Stack:
    settings: DriftloopSettings
    #: Ports by child name (``ingestion``, ``ingestion#1``); others come from the settings and the replica rule.
    ports: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    broker: BrokerProcess | None = None
    children: dict[str, Child] = field(default_factory=dict)
    #: Replicas per service; a service not named here runs once.
    replicas: dict[str, int] = field(default_factory=dict)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)

    def port_of(self, service: str, replica: int) -> int:
        name = child_name(service, replica)
        if name in self.ports:
            return self.ports[name]
        base = self.ports.get(service) or self.settings.service_port(service)
        return base + REPLICA_PORT_STEP * replica

    @property
    def log_dir(self) -> Path:
        return self.settings.home / "logs"

    def start(self, services: tuple[str, ...] = SERVICES) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.settings.kafka_bootstrap:
            self.broker = local_broker(self.settings, self.log_dir / "broker.log").start()
            self.settings = self.settings.model_copy(update={"kafka_bootstrap": self.broker.bootstrap})
        asyncio.run(ensure_topics(self.settings))
        # The person who ran `up` administers it: the CLI and the demo find this token under DRIFTLOOP_HOME.
        local_admin_token(self.settings)
        for service in services:
            for replica in range(self.replicas.get(service, 1)):
                name = child_name(service, replica)
                log_name = service if replica == 0 else f"{service}.{replica}"
                self.children[name] = Child(
                    name, self.port_of(service, replica), self.log_dir / f"{log_name}.log", service, replica
                )
                self.spawn(name)

    def _child_env(self, child: Child) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env.update(
            DRIFTLOOP_KAFKA_BOOTSTRAP=self.settings.bootstrap,
            DRIFTLOOP_PORT=str(child.port),
            DRIFTLOOP_INSTANCE=child.instance,
            DRIFTLOOP_HOME=str(self.settings.home),
            DRIFTLOOP_CONFIG=str(self.settings.config),
            DRIFTLOOP_TOPIC_PREFIX=self.settings.topic_prefix,
        )
        # The dashboard (on the registry) sends browsers to monitoring's first replica, wherever it listens.
        env["DRIFTLOOP_PORTS__MONITORING"] = str(self.port_of("monitoring", 0))
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
        child.ready = child.was_ready = False
        child.process = subprocess.Popen(
            [sys.executable, "-m", "driftloop.cli.main", "service", child.service],
            env=self._child_env(child),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if child.supervision is None:
            child.supervision = Supervision(started_at=time.monotonic())

    def supervise(self, now: float | None = None) -> list[str]:
        """Restart every child that exited unasked once its back-off is over; returns the names restarted."""
        now = time.monotonic() if now is None else now
        restarted = []
        for name, child in self.children.items():
            code = child.process.poll() if child.process is not None else None
            if code is None or child.supervision is None:
                continue
            supervision = child.supervision
            if supervision.restart_at is None:
                at = supervision.exited(code, now, self.restart_policy)
                log.warning("service exited; restarting", child=name, code=code, in_seconds=round(at - now, 1))
            if supervision.due(now):
                self.spawn(name)
                supervision.restarted(now)
                restarted.append(name)
        return restarted

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
                child.was_ready = child.was_ready or child.ready
        now = time.monotonic()
        return {name: child.state(self.restart_policy, now) for name, child in self.children.items()}

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
