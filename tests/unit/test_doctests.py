"""The examples in docstrings are tests too: every driftloop module's doctests must pass."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import driftloop


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(driftloop.__path__, "driftloop.") if not m.ispkg)


@pytest.mark.parametrize("name", modules())
def test_docstring_examples_hold(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_the_domain_modules_have_examples() -> None:
    finder = doctest.DocTestFinder()
    for name in (
        "driftloop.rollout",
        "driftloop.services.features.domain",
        "driftloop.services.monitoring.domain",
        "driftloop.services.monitoring.history",
        "driftloop.services.monitoring.join",
        "driftloop.services.registry.domain",
        "driftloop.services.registry.gate",
        "driftloop.services.training.domain",
    ):
        assert any(t.examples for t in finder.find(importlib.import_module(name))), name
