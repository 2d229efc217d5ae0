"""A fit runs with the OpenMP threads the training settings allow, in the worker thread that fits."""

from __future__ import annotations

import sklearn.ensemble  # noqa: F401  (loads scikit-learn's OpenMP runtime)
from threadpoolctl import threadpool_info

from driftloop.services.training.handlers import fitting
from driftloop.services.training.settings import TrainingSettings


def openmp_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"}


async def test_a_fit_sees_the_configured_openmp_threads_and_the_default_is_one() -> None:
    assert TrainingSettings().fit_threads == 1
    assert await fitting(1, openmp_threads) == {1}
    assert await fitting(3, openmp_threads) == {3}
