"""The folder tree is the architecture: services share only contracts and libs, never each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services/driftloop/services").iterdir() if (p / "main.py").exists())


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_there_are_six_services_each_with_the_same_rooms() -> None:
    assert SERVICES == ["deployment", "features", "ingestion", "monitoring", "registry", "training"]
    for name in SERVICES:
        rooms = {p.name for p in (ROOT / "services/driftloop/services" / name).glob("*.py")}
        assert {"settings.py", "main.py", "api.py"} <= rooms, name


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    for path in (ROOT / "services/driftloop/services" / service).rglob("*.py"):
        for module in imports(path):
            if module.startswith("driftloop.services."):
                assert module.split(".")[2] == service, f"{path.relative_to(ROOT)} imports {module}"


def test_contracts_and_libs_import_no_service() -> None:
    for folder in ("contracts", "libs"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not any(
                m.startswith("driftloop.services") or m.startswith("driftloop.cli") for m in imports(path)
            ), path
