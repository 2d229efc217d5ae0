"""Deployment's start waits for the registry's history, and fails loudly instead of hanging when it cannot."""

from __future__ import annotations

import asyncio

import pytest

from driftloop.bus import FollowerFailed, TopicUnavailable, follower_state, wait_caught_up


async def test_start_goes_on_once_history_is_read() -> None:
    caught_up = asyncio.Event()

    async def follow() -> None:
        caught_up.set()
        await asyncio.sleep(3600)

    follower = asyncio.create_task(follow())
    await wait_caught_up(follower, caught_up, timeout=5, service="deployment")
    assert follower_state(follower) is True
    follower.cancel()


async def test_start_fails_with_the_reason_when_the_follower_dies() -> None:
    async def follow() -> None:
        raise TopicUnavailable("topic(s) x.registry.events have no partitions")

    follower = asyncio.create_task(follow())
    with pytest.raises(
        FollowerFailed, match=r"cannot follow registry.events: TopicUnavailable\('topic\(s\) x.registry"
    ):
        await wait_caught_up(follower, asyncio.Event(), timeout=5, service="deployment")
    assert follower_state(follower) == "stopped: TopicUnavailable('topic(s) x.registry.events have no partitions')"


async def test_start_fails_when_history_is_not_read_in_time() -> None:
    follower = asyncio.create_task(asyncio.sleep(3600))
    with pytest.raises(FollowerFailed, match="did not catch up with registry.events within 0s"):
        await wait_caught_up(follower, asyncio.Event(), timeout=0.05, service="deployment")
    await asyncio.sleep(0)
    assert follower.cancelled() and follower_state(follower) == "stopped"
    assert follower_state(None) == "not started"
