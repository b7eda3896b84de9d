"""The manual clock: time moves only when the test says, and sleepers wake exactly then."""

from __future__ import annotations

import asyncio

import pytest

from warngate.clock import Clock, SystemClock
from warngate.testing import ManualClock


async def test_sleepers_wake_when_their_time_comes_and_not_before() -> None:
    clock = ManualClock(start=1000.0)
    woke: list[str] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(f"{name}@{clock.now():g}")

    tasks = [asyncio.create_task(nap("short", 5), name="short"),
             asyncio.create_task(nap("long", 60), name="long")]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    assert clock.advance(4.9) == 0
    await asyncio.sleep(0)
    assert woke == []
    assert clock.advance(0.1) == 1
    await asyncio.sleep(0)
    assert woke == ["short@1005"]
    clock.advance(100)
    await asyncio.gather(*tasks)
    assert woke == ["short@1005", "long@1105"]


async def test_a_cancelled_sleeper_is_forgotten() -> None:
    clock = ManualClock()
    task = asyncio.create_task(clock.sleep(10), name="sleeper")
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait([task])
    assert clock.sleepers == 0 and clock.advance(20) == 0


def test_time_does_not_run_backwards() -> None:
    with pytest.raises(ValueError, match="seconds"):
        ManualClock().advance(-1)


async def test_both_clocks_fit_the_protocol() -> None:
    clocks: list[Clock] = [SystemClock(), ManualClock()]
    for clock in clocks:
        before = clock.now()
        await clock.sleep(0)
        assert clock.now() >= before
