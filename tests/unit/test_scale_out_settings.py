"""Ports and replica counts for scale-out: what ``driftloop up --replicas`` and two stacks on one host rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftloop.cli.stack import SERVICES, Stack, child_name, parse_replicas
from driftloop.settings import SERVICE_PORTS, DriftloopSettings, ServiceSettings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("DRIFTLOOP_PORT", "DRIFTLOOP_PORT_BASE", "DRIFTLOOP_INSTANCE", "DRIFTLOOP_PORTS"):
        monkeypatch.delenv(key, raising=False)


def test_default_ports_are_the_well_known_ones() -> None:
    settings = DriftloopSettings()
    assert {name: settings.service_port(name) for name in SERVICES} == SERVICE_PORTS


def test_a_port_base_moves_every_service_and_a_per_service_port_beats_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_PORT_BASE", "9100")
    monkeypatch.setenv("DRIFTLOOP_PORTS__TRAINING", "9999")
    settings = DriftloopSettings()
    assert {name: settings.service_port(name) for name in SERVICES} == {
        "ingestion": 9101,
        "features": 9102,
        "training": 9999,
        "registry": 9104,
        "deployment": 9105,
        "monitoring": 9106,
    }
    assert ServiceSettings(service="registry").listen_port == 9104
    monkeypatch.setenv("DRIFTLOOP_PORT", "7000")
    assert ServiceSettings(service="registry").listen_port == 7000, "DRIFTLOOP_PORT still wins for one process"


def test_the_instance_id_tells_replicas_apart_by_port_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = ServiceSettings(service="training", port=8003), ServiceSettings(service="training", port=8013)
    assert first.instance_id != second.instance_id and first.instance_id.endswith(":8003")
    monkeypatch.setenv("DRIFTLOOP_INSTANCE", "training-a")
    assert ServiceSettings(service="training").instance_id == "training-a"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], dict.fromkeys(SERVICES, 1)),
        (["2"], dict.fromkeys(SERVICES, 2)),
        (["training=3"], {**dict.fromkeys(SERVICES, 1), "training": 3}),
        (["2", "registry=1", "ingestion=4"], {**dict.fromkeys(SERVICES, 2), "registry": 1, "ingestion": 4}),
    ],
)
def test_replicas_parse_from_a_count_or_service_counts(values: list[str], expected: dict[str, int]) -> None:
    assert parse_replicas(values) == expected


@pytest.mark.parametrize("value", ["0", "two", "trainer=2", "training=", "training=-1"])
def test_a_bad_replica_value_names_the_problem(value: str) -> None:
    with pytest.raises(ValueError, match=value.split("=")[0] or "replicas"):
        parse_replicas([value])


def test_replica_k_listens_ten_ports_above_the_service_unless_its_port_is_given(tmp_path: Path) -> None:
    stack = Stack(DriftloopSettings(home=tmp_path, port_base=9000), ports={"features": 7002, "features#2": 7100})
    assert [stack.port_of("training", k) for k in range(3)] == [9003, 9013, 9023]
    assert [stack.port_of("features", k) for k in range(3)] == [7002, 7012, 7100]
    assert [child_name("training", k) for k in range(3)] == ["training", "training#1", "training#2"]
