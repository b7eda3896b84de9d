"""``wait_any``: the first of several events (a signal, or the gateway stopping) ends the
wait, and nothing is left waiting behind it."""

from __future__ import annotations

import asyncio

from warngate.waiting import cancel_and_wait, wait_any


async def test_the_first_event_ends_the_wait() -> None:
    signal, stopped = asyncio.Event(), asyncio.Event()
    waiting = asyncio.create_task(wait_any([signal, stopped], None), name="waiting")
    await asyncio.sleep(0)
    assert not waiting.done()
    stopped.set()
    assert await waiting is True


async def test_a_timeout_says_false() -> None:
    assert await wait_any([asyncio.Event(), asyncio.Event()], 0.01) is False
    already = asyncio.Event()
    already.set()
    assert await wait_any([asyncio.Event(), already], 0) is True


async def test_cancel_and_wait_gives_up_on_a_task_deaf_to_cancellation() -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf(), name="deaf")
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], grace=0.05) is False
    release.set()
    await asyncio.wait([task])
    assert await cancel_and_wait([], grace=0.05) is True
