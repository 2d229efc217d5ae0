"""docker-compose.yml, the Dockerfile and infra/, read statically (no Docker engine here).

They must match the code they run: service names and ports, setting names, files, metric names.
"""

from __future__ import annotations

import base64
import fnmatch
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftloop.settings import SERVICE_PORTS, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
#: The services built from the repo's Dockerfile.
DRIFTLOOP: dict[str, Any] = {name: spec for name, spec in SERVICES.items() if "build" in spec}
#: Containers that run once and exit; they have no healthcheck by design.
ONE_SHOT = {name for name, spec in SERVICES.items() if spec.get("restart") == "no"}
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SETTING_KEY = re.compile(r"\bDRIFTLOOP_[A-Z0-9_]+\b")


def field_of(key: str) -> str:
    return key.removeprefix("DRIFTLOOP_").lower()


def environment(spec: dict[str, Any]) -> dict[str, str]:
    """A service's environment in either compose form (mapping or ``KEY=value`` list), values as strings."""
    env = spec.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def depends_on(spec: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition, for the list form too (which means service_started)."""
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (cond or {}).get("condition", "service_started") for name, cond in deps.items()}


def published(spec: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port, from short (``[ip:]host:container[/proto]``) and long port syntax."""
    ports: dict[int, int] = {}
    for entry in spec.get("ports", []):
        if isinstance(entry, dict):
            ports[int(entry["target"])] = int(entry.get("published", entry["target"]))
            continue
        parts = str(entry).split("/")[0].split(":")
        ports[int(parts[-1])] = int(parts[-2] if len(parts) > 1 else parts[-1])
    return ports


def bind_mounts(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of each bind mount; named volumes are left out."""
    for volume in spec.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"], volume["target"]
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/", "~")):
            yield source, target


def named_volumes(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for volume in spec.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "volume":
                yield volume["source"], volume["target"]
            continue
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/", "~")):
            yield source, target


def settings_class(service: str) -> type[ServiceSettings]:
    """The service's own settings subclass (it may add fields), else the shared one."""
    try:
        module = importlib.import_module(f"driftloop.services.{service}.settings")
    except ModuleNotFoundError:
        return ServiceSettings
    own = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ServiceSettings) and cls.__module__ == module.__name__
    ]
    return own[0] if len(own) == 1 else ServiceSettings


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in DOCKERFILE.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in logical]


def copy_sources() -> list[str]:
    """Build-context paths the Dockerfile COPYs/ADDs (copies from another stage excluded)."""
    sources: list[str] = []
    for instruction, args in dockerfile_instructions():
        if instruction not in {"COPY", "ADD"}:
            continue
        tokens = json.loads(args) if args.startswith("[") else args.split()
        if any(token.startswith("--from") for token in tokens):
            continue
        paths = [token for token in tokens if not token.startswith("--")]
        sources += paths[:-1]
    return sources


# --- the six services -----------------------------------------------------------------------------------------------


def test_each_of_the_six_services_runs_once_under_its_own_name() -> None:
    commands = {name: spec.get("command") for name, spec in DRIFTLOOP.items()}
    for name, command in commands.items():
        assert command == ["service", name], f"{name}: {command}"
    assert sorted(command[1] for command in commands.values()) == sorted(SERVICE_PORTS)
    assert all(spec["build"] in (".", {"context": "."}) for spec in DRIFTLOOP.values())


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_each_service_listens_on_and_publishes_its_well_known_port(name: str) -> None:
    spec = DRIFTLOOP[name]
    port = SERVICE_PORTS[name]
    assert environment(spec)["DRIFTLOOP_PORT"] == str(port)
    assert published(spec).get(port) == port


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_the_compose_environment_builds_the_settings_the_service_expects(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DRIFTLOOP[name]
    for key in [key for key in os.environ if key.startswith("DRIFTLOOP_")]:
        monkeypatch.delenv(key)
    for key, value in environment(spec).items():
        monkeypatch.setenv(key, value)
    settings = settings_class(name)()  # values must parse, e.g. DRIFTLOOP_S3_SECURE, DRIFTLOOP_LOG_FORMAT
    shared = ServiceSettings(service=name)  # what `driftloop service NAME` builds to choose its port
    assert shared.listen_port == SERVICE_PORTS[name]
    assert settings.host == "0.0.0.0"
    assert settings.bootstrap == "kafka:9092"
    assert settings.db_url.startswith("postgresql+psycopg2://")
    assert settings.artifacts.startswith("s3://")
    assert settings.s3_secure is False
    assert str(settings.config) == "/app/driftloop.yaml"


def test_every_driftloop_variable_in_the_compose_file_is_a_settings_field() -> None:
    """A renamed or removed setting breaks this test instead of being silently ignored in production."""
    shared = set(ServiceSettings.model_fields)
    anchor = environment(COMPOSE["x-driftloop"])
    assert anchor, "the x-driftloop anchor sets no environment"
    assert sorted(key for key in anchor if field_of(key) not in shared) == []
    for name, spec in DRIFTLOOP.items():
        fields = set(settings_class(name).model_fields)
        unknown = sorted(
            key for key in environment(spec) if key.startswith("DRIFTLOOP_") and field_of(key) not in fields
        )
        assert unknown == [], name
    every_field = shared.union(*(settings_class(name).model_fields for name in SERVICE_PORTS))
    mentioned = set(SETTING_KEY.findall(COMPOSE_TEXT))  # also healthchecks, comments, list-form environments
    assert "DRIFTLOOP_KAFKA_BOOTSTRAP" in mentioned
    assert sorted(key for key in mentioned if field_of(key) not in every_field) == []


def test_the_dockerfile_only_sets_settings_that_exist() -> None:
    keys = set(SETTING_KEY.findall(DOCKERFILE))
    assert "DRIFTLOOP_CONFIG" in keys
    assert sorted(key for key in keys if field_of(key) not in ServiceSettings.model_fields) == []


# --- infrastructure wiring -------------------------------------------------------------------------------------------


def test_services_point_at_the_compose_infrastructure() -> None:
    env = environment(COMPOSE["x-driftloop"])
    kafka = environment(SERVICES["kafka"])
    advertised = {listener.split("://", 1)[1] for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert env["DRIFTLOOP_KAFKA_BOOTSTRAP"] in advertised

    postgres = environment(SERVICES["postgres"])
    user, password, db = postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
    assert env["DRIFTLOOP_DATABASE_URL"] == f"postgresql+psycopg2://{user}:{password}@postgres:5432/{db}"

    minio = environment(SERVICES["minio"])
    assert env["DRIFTLOOP_S3_ENDPOINT"] == "minio:9000"
    assert env["DRIFTLOOP_S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
    assert env["DRIFTLOOP_S3_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    bucket = env["DRIFTLOOP_ARTIFACT_URI"].removeprefix("s3://").split("/")[0]
    init = " ".join(SERVICES["minio-init"]["command"])
    assert re.search(rf"mc mb .*local/{re.escape(bucket)}\b", init), init


def test_kafka_is_a_single_node_kraft_broker_without_topic_auto_creation() -> None:
    kafka = environment(SERVICES["kafka"])
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka['KAFKA_NODE_ID']}@kafka:9093"
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert kafka[key] == "1", key
    # Every listener has a security protocol, and the controller listener is one of them.
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {listener.split("://")[0] for listener in kafka["KAFKA_LISTENERS"].split(",")}
    assert listeners <= set(protocols)
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert kafka["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    # kafka-storage.sh format wants a base64url UUID; the log directory must be the persisted volume.
    assert len(base64.urlsafe_b64decode(kafka["CLUSTER_ID"] + "==")) == 16
    assert kafka["KAFKA_LOG_DIRS"] in {target for _, target in named_volumes(SERVICES["kafka"])}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_and_real_dependencies(name: str) -> None:
    spec = SERVICES[name]
    if name not in ONE_SHOT:
        assert spec.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for dependency, condition in depends_on(spec).items():
        assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        if condition == "service_healthy":
            assert SERVICES[dependency].get("healthcheck", {}).get("test"), (
                f"{name} waits for {dependency} to be healthy"
            )
        if condition == "service_completed_successfully":
            assert dependency in ONE_SHOT, f"{name} waits for {dependency} to exit, but it restarts"
    assert sorted(ONE_SHOT) == ["minio-init"]


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_services_start_after_the_infrastructure_is_ready(name: str) -> None:
    assert depends_on(DRIFTLOOP[name]) == {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "minio-init": "service_completed_successfully",
    }


class _Health(BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


#: One service per distinct probe: the six share theirs unless one hard-codes its port or overrides it.
PROBED = sorted(
    {json.dumps(spec.get("healthcheck", {}).get("test")): name for name, spec in DRIFTLOOP.items()}.values()
)


@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize("name", PROBED)
def test_the_service_healthcheck_probes_healthz_on_the_service_port(name: str, status: int) -> None:
    """Runs the compose probe itself against a stand-in server: it passes on 200 and fails otherwise."""
    test = DRIFTLOOP[name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "python:3.11-slim has no curl: probe with python"
    handler = type("Health", (_Health,), {"status": status, "paths": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        stand_in = str(server.server_address[1])
        code = test[3].replace(str(SERVICE_PORTS[name]), stand_in)  # a probe may hard-code the port
        env = {**environment(DRIFTLOOP[name]), "DRIFTLOOP_PORT": stand_in}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert handler.paths == ["/healthz"]
    assert (result.returncode == 0) is (status == 200), result.stderr.decode()[-500:]


# --- files -----------------------------------------------------------------------------------------------------------


def test_mounted_files_exist_and_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, spec in SERVICES.items():
        for source, _ in bind_mounts(spec):
            assert not source.startswith(("/", "~")), f"{name} mounts a machine-specific path {source}"
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        for volume, _ in named_volumes(spec):
            assert volume in declared, f"{name} uses undeclared volume {volume}"
    assert (ROOT / "Dockerfile").is_file()


def test_the_ml_config_is_where_the_settings_look_for_it() -> None:
    config = environment(COMPOSE["x-driftloop"])["DRIFTLOOP_CONFIG"]
    assert (
        dict((target, source) for source, target in bind_mounts(COMPOSE["x-driftloop"]))[config] == "./driftloop.yaml"
    )
    assert ("COPY", f"driftloop.yaml {config}") in dockerfile_instructions()


def test_dockerfile_copies_files_that_exist_and_are_not_docker_ignored() -> None:
    sources = copy_sources()
    assert {"pyproject.toml", "contracts", "libs", "services", "driftloop.yaml"} <= {s.rstrip("/") for s in sources}
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    if readme:  # hatchling needs it to build the wheel
        assert readme in sources
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".venv", ".git", ".driftloop"} <= set(ignored)
    for source in sources:
        assert (ROOT / source).exists(), source
        hits = [pattern for pattern in ignored if fnmatch.fnmatch(source.rstrip("/"), pattern)]
        assert hits == [], f"{source} is COPYed but .dockerignore drops it ({hits})"


def test_the_image_runs_the_driftloop_cli_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    entrypoint = [args for instruction, args in instructions if instruction == "ENTRYPOINT"][-1]
    assert json.loads(entrypoint) == ["driftloop"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "driftloop" in scripts
    assert [args for instruction, args in instructions if instruction == "FROM"][-1].startswith("python:3.11-slim")
    assert [args for instruction, args in instructions if instruction == "WORKDIR"][-1] == "/app"
    user = [args for instruction, args in instructions if instruction == "USER"][-1]
    assert user.split(":")[0] not in {"root", "0"}


# --- Prometheus and Grafana -----------------------------------------------------------------------------------------


def test_prometheus_scrapes_every_service_port() -> None:
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    expected = {f"{name}:{port}" for name, port in SERVICE_PORTS.items()}
    assert expected <= targets, sorted(expected - targets)
    mounts = {target: source for source, target in bind_mounts(SERVICES["prometheus"])}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./infra/prometheus/prometheus.yml"


def test_every_alert_rule_is_loaded_and_asks_for_a_metric_the_services_export() -> None:
    from prometheus_client import REGISTRY

    import driftloop.services.monitoring.metrics  # noqa: F401  (registers monitoring's metrics)

    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    mounts = {target: source for source, target in bind_mounts(SERVICES["prometheus"])}
    rule_files = [mounts[path] for path in config["rule_files"]]
    exported = {metric.name for metric in REGISTRY.collect()}
    rules = [r for f in rule_files for g in yaml.safe_load((ROOT / f).read_text())["groups"] for r in g["rules"]]
    assert [r["alert"] for r in rules] == ["DriftUnresolved"]
    for rule in rules:
        named = set(re.findall(r"driftloop_[a-z_]+", rule["expr"]))
        assert named and named <= exported, (rule["alert"], sorted(named - exported))


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard_folder() -> None:
    grafana = {target: source for source, target in bind_mounts(SERVICES["grafana"])}
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["url"], d["uid"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090", "prometheus")
    ]
    assert published(SERVICES["prometheus"]).get(9090) == 9090
    providers = yaml.safe_load((provisioning / "dashboards/driftloop.yml").read_text())["providers"]
    paths = {provider["options"]["path"] for provider in providers}
    assert paths == {"/var/lib/grafana/dashboards"}
    assert grafana["/var/lib/grafana/dashboards"] == "./infra/grafana/dashboards"
    assert (ROOT / "infra/grafana/dashboards/driftloop.json").is_file()


def declared_metrics() -> set[str]:
    """The driftloop_* metrics the code declares and also sets somewhere: a declared metric nothing sets
    exports nothing, and a panel on it would stay empty for good."""
    declaration = re.compile(r"\b(\w+)\s*=\s*(?:Counter|Gauge|Histogram|Summary)\(\s*[\"'](driftloop_\w+)[\"']")
    sources = [
        path.read_text() for folder in ("contracts", "libs", "services") for path in (ROOT / folder).rglob("*.py")
    ]
    code = "\n".join(sources)
    return {
        name
        for variable, name in declaration.findall(code)
        if re.search(rf"\b{variable}\.(?:labels|set|inc|dec|observe)\(", code)
    }


def test_the_dashboard_queries_metrics_the_services_export() -> None:
    dashboard = json.loads((ROOT / "infra/grafana/dashboards/driftloop.json").read_text())
    datasource_uid = "prometheus"
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
    assert any(re.search(r"\bup\b", expr) for expr in exprs)
    assert any("process_" in expr for expr in exprs)
    declared = declared_metrics()
    assert declared, "no driftloop_* metrics found in the code"
    used = {name for expr in exprs for name in re.findall(r"\bdriftloop_\w+", expr)}
    assert used
    suffixes = ("_bucket", "_sum", "_count", "_created")
    unknown = sorted(
        name
        for name in used
        if name not in declared
        and name.removesuffix("_total") not in declared  # a Counter declared without the suffix
        and not any(name.endswith(s) and name.removesuffix(s) in declared for s in suffixes)
    )
    assert unknown == [], f"the dashboard queries metrics no service declares: {unknown}"


def test_every_gauge_monitoring_exports_has_a_panel() -> None:
    """Realized and estimated accuracy with its interval, unresolved drift and the join's size are what an
    operator watches the loop by; a gauge no panel shows is one nobody looks at."""
    source = (ROOT / "services/driftloop/services/monitoring/metrics.py").read_text()
    gauges = set(re.findall(r"\bGauge\(\s*[\"'](driftloop_\w+)[\"']", source))
    assert {"driftloop_estimated_accuracy", "driftloop_drift_unresolved"} <= gauges
    dashboard = json.loads((ROOT / "infra/grafana/dashboards/driftloop.json").read_text())
    shown = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\bdriftloop_\w+", target["expr"])
    }
    assert sorted(gauges - shown) == []
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
