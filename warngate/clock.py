"""Where the gateway reads the time and waits: injectable, so tests move time instead of
sleeping.

``now()`` is wall-clock seconds since the epoch, the unit of every time column in the store
(``due_at``, ``escalate_at``, ``lease_until``). ``warngate.testing.ManualClock`` is the
stand-in whose time moves only when a test says so.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """The time, and a way to wait for some of it to pass."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The real time: ``time.time`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
