"""Waiting on events and tasks without losing a cancellation.

``asyncio.wait_for`` on Python 3.11 returns normally when its task is cancelled in the same
loop iteration as the awaited event is set, swallowing the cancellation: a loop built on it
then never stops (CI saw the demo ignore SIGINT under load). ``asyncio.timeout`` does not
have that race.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
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


async def wait_any(events: Sequence[asyncio.Event], seconds: float | None) -> bool:
    """Wait until any of ``events`` is set or ``seconds`` pass; True if one was set."""
    if any(e.is_set() for e in events):
        return True
    waiters = [asyncio.create_task(e.wait(), name=f"wait-any-{i}") for i, e in enumerate(events)]
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.wait(waiters)
    return bool(done)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, grace: float | None = None
) -> bool:
    """Cancel ``tasks`` and wait until every one has ended, or ``grace`` seconds pass.

    An error a task had already ended with is logged rather than raised, so that the rest
    of a shutdown still happens. A task still running when ``grace`` is up (one that
    swallows cancellation, or whose clean-up is stuck on a dead connection) is logged and
    left behind: a shutdown that never ends loses more than one that gives up on a task.
    Returns True if every task ended.
    """
    ending = list(tasks)
    if not ending:
        return True
    for task in ending:
        task.cancel()
    # ``asyncio.wait`` rather than ``gather``: if this wait is itself cancelled, the tasks
    # still get to run their clean-up.
    done, pending = await asyncio.wait(ending, timeout=grace)
    for task in ending:
        if task in done and not task.cancelled() and task.exception() is not None:
            log.error("task %s had failed: %r", task.get_name(), task.exception())
    for task in pending:
        log.error("task %s did not end within %.1f s of being cancelled; going on without it",
                  task.get_name(), grace)
    return not pending
