"""Deployment on a real broker: a start that cannot read the registry's history fails, it does not hang."""

from __future__ import annotations

import asyncio

import pytest

from driftloop.bus import FollowerFailed
from driftloop.services.deployment.main import create_app
from driftloop.services.deployment.settings import DeploymentSettings
from driftloop.settings import DriftloopSettings
from tests.support import running


async def test_start_fails_with_a_clear_message_when_history_cannot_be_read_in_time(
    settings: DriftloopSettings,
) -> None:
    slow = DeploymentSettings(**{**settings.model_dump(), "catch_up_timeout_seconds": 0.001})
    with pytest.raises(FollowerFailed, match=r"did not catch up with (deployment|registry)\.events"):
        async with asyncio.timeout(60), running(create_app(slow)):
            pass
