"""Starting a service that follows ``registry.events`` (``replay``): wait for its history, report its state."""

from __future__ import annotations

import asyncio

from driftloop.logging import get_logger

log = get_logger(__name__)


class FollowerFailed(RuntimeError):
    """A service cannot know what the registry decided: following ``registry.events`` stopped or never caught up."""


async def wait_caught_up(
    follower: asyncio.Task[None],
    caught_up: asyncio.Event,
    timeout: float,
    service: str,
    topic: str = "registry.events",
) -> None:
    """Wait for a followed topic's history, or fail at once when the follower dies instead of hanging."""
    waiter = asyncio.create_task(caught_up.wait())
    try:
        done, _ = await asyncio.wait({follower, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if waiter in done:
        return
    if follower in done:
        failure = follower.exception() if not follower.cancelled() else None
        log.error("cannot follow a topic", topic=topic, error=repr(failure))
        raise FollowerFailed(f"{service} cannot follow {topic}: {failure!r}") from failure
    follower.cancel()
    log.error("topic not caught up in time", topic=topic, timeout_seconds=timeout)
    raise FollowerFailed(f"{service} did not catch up with {topic} within {timeout:.0f}s")


def follower_state(follower: asyncio.Task[None] | None) -> bool | str:
    """Readiness of the registry follower: True while it runs, else why it stopped."""
    if follower is None:
        return "not started"
    if not follower.done():
        return True
    if follower.cancelled():
        return "stopped"
    return f"stopped: {follower.exception()!r}"
