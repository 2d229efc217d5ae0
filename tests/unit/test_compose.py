"""docker-compose.yml, read statically (no Docker engine here): it must match the code it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftloop.services.features.settings import FeaturesSettings
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.settings import SERVICE_PORTS, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DRIFTLOOP = {name: spec for name, spec in SERVICES.items() if spec.get("command", [None])[0] == "service"}
SETTING_FIELDS = (
    set(ServiceSettings.model_fields) | set(FeaturesSettings.model_fields) | set(MonitoringSettings.model_fields)
)


def test_each_of_the_six_services_runs_once_with_its_own_name_and_port() -> None:
    assert sorted(spec["command"][1] for spec in DRIFTLOOP.values()) == sorted(SERVICE_PORTS)
    for name, spec in DRIFTLOOP.items():
        assert spec["command"] == ["service", name]
        port = SERVICE_PORTS[name]
        assert spec["environment"]["DRIFTLOOP_PORT"] == str(port)
        assert f"{port}:{port}" in spec["ports"]


def test_every_driftloop_setting_in_the_file_is_a_field_of_the_settings() -> None:
    keys = set(re.findall(r"\b(DRIFTLOOP_[A-Z0-9_]+):", (ROOT / "docker-compose.yml").read_text()))
    assert keys, "no settings found"
    unknown = {k for k in keys if k.removeprefix("DRIFTLOOP_").lower() not in SETTING_FIELDS}
    assert unknown == set()


def test_services_point_at_the_compose_infrastructure() -> None:
    env = DRIFTLOOP["registry"]["environment"]
    assert env["DRIFTLOOP_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert (
        env["DRIFTLOOP_DATABASE_URL"].startswith("postgresql+psycopg2://")
        and "@postgres:5432/" in env["DRIFTLOOP_DATABASE_URL"]
    )
    assert env["DRIFTLOOP_ARTIFACT_URI"].startswith("s3://driftloop/")
    assert env["DRIFTLOOP_S3_ENDPOINT"] == "minio:9000"
    assert env["DRIFTLOOP_S3_SECRET_KEY"] == SERVICES["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert SERVICES["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_and_real_dependencies(name: str) -> None:
    spec = SERVICES[name]
    if name != "minio-init":
        assert "healthcheck" in spec, name
    for dependency in spec.get("depends_on", {}):
        assert dependency in SERVICES, f"{name} depends on unknown {dependency}"


def test_mounted_and_copied_files_exist() -> None:
    for spec in SERVICES.values():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), source
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_the_image_runs_the_driftloop_cli() -> None:
    assert 'ENTRYPOINT ["driftloop"]' in (ROOT / "Dockerfile").read_text()


def test_prometheus_scrapes_every_service_port() -> None:
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:{port}" for name, port in SERVICE_PORTS.items()}
