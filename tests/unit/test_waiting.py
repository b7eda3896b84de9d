"""A loop waiting on an event stops when cancelled, even if the event fired just before."""

from __future__ import annotations

import asyncio

import pytest

from warngate.waiting import wait_set


async def _wake_loop(event: asyncio.Event) -> None:
    while True:
        await wait_set(event, 10)
        event.clear()


async def test_cancel_right_after_the_event_fired_stops_the_loop() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_wake_loop(event))
    await asyncio.sleep(0)
    event.set()
    await asyncio.sleep(0)  # the wait has been woken but the task has not resumed yet
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()


async def test_reports_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    event.set()
    assert await wait_set(event, 0.01) is True
    assert await wait_set(event, None) is True


async def test_a_timeout_is_not_mistaken_for_cancellation() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(wait_set(event, 0.01))
    assert await task is False
    with pytest.raises(asyncio.CancelledError):
        t2 = asyncio.create_task(wait_set(event, 10))
        await asyncio.sleep(0)
        t2.cancel()
        await t2
