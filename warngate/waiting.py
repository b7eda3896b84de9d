"""Waiting on events and tasks without losing a cancellation.

``asyncio.wait_for`` on Python 3.11 returns normally when its task is cancelled in the same
loop iteration as the awaited event is set, swallowing the cancellation: a loop built on it
then never stops (CI saw the demo ignore SIGINT under load). ``asyncio.timeout`` does not
have that race.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


async def wait_set(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    An error a task had already ended with is logged rather than raised, so that the rest
    of a shutdown still happens.
    """
    ending = list(tasks)
    for task in ending:
        task.cancel()
    results = await asyncio.gather(*ending, return_exceptions=True)
    for task, result in zip(ending, results, strict=True):
        if isinstance(result, Exception):
            log.error("task %s had failed: %r", task.get_name(), result)
