"""Garbage collection in a service: start-up's objects frozen, young objects collected in larger steps."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from driftloop.runtime import tune_gc
from driftloop.settings import DriftloopSettings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_thresholds_set(restored_gc: None) -> None:
    kept = [[i] for i in range(1000)]
    tune_gc(DriftloopSettings())
    assert gc.get_threshold() == (20_000, 20, 50)
    assert gc.get_freeze_count() >= len(kept)
    # A frozen object is in no generation: no collection walks it again.
    assert all(o is not kept[0] for g in range(3) for o in gc.get_objects(generation=g))


def test_thresholds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, restored_gc: None) -> None:
    monkeypatch.setenv("DRIFTLOOP_GC_THRESHOLD", "[5000, 10, 10]")
    tune_gc(DriftloopSettings())
    assert gc.get_threshold() == (5000, 10, 10)


def test_cycles_made_after_start_up_are_still_collected(restored_gc: None) -> None:
    tune_gc(DriftloopSettings())

    class Node:
        other: Node

    a, b = Node(), Node()
    a.other, b.other = b, a
    watched = weakref.ref(a)
    del a, b
    gc.collect()
    assert watched() is None
