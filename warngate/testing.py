"""In-memory stand-ins of warngate's own interfaces, for unit tests of adapters and plugins."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from warngate.adapter import ProviderEvent


@dataclass
class RecordingSink:
    """A ``ReceiptSink`` that records every call; ``wait_for`` awaits a matching record."""

    receipts: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[tuple[str, bool]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def receipt(
        self,
        *,
        delivery_id: int | None = None,
        provider_ref: str | None = None,
        status: str,
        detail: str | None = None,
        event: ProviderEvent | None = None,
    ) -> None:
        self.receipts.append(
            {"delivery_id": delivery_id, "provider_ref": provider_ref, "status": status,
             "detail": detail, "event": event}
        )
        self._changed.set()

    def acknowledge(
        self,
        *,
        delivery_id: int | None = None,
        provider_ref: str | None = None,
        phone: str | None = None,
        via: str,
        detail: str | None = None,
        event: ProviderEvent | None = None,
    ) -> None:
        self.acks.append(
            {"delivery_id": delivery_id, "provider_ref": provider_ref, "phone": phone,
             "via": via, "detail": detail, "event": event}
        )
        self._changed.set()

    def speaker_status(self, speaker_id: str, *, online: bool) -> None:
        self.statuses.append((speaker_id, online))
        self._changed.set()

    async def wait_for(self, predicate: Any, within: float = 5.0) -> None:
        """Wait until ``predicate(self)`` is true, or raise TimeoutError."""
        async with asyncio.timeout(within):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()


class ManualClock:
    """A ``warngate.clock.Clock`` whose time moves only on ``advance``.

    A test that checks "nothing more happened after the deadline" advances past it instead
    of sleeping through it. Sleepers woken by ``advance`` run at the caller's next ``await``.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # still a turn of the loop, like asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._now + seconds, woken)
        self._sleepers.append(entry)
        try:
            await woken
        finally:
            if entry in self._sleepers:  # cancelled before its time came
                self._sleepers.remove(entry)

    @property
    def sleepers(self) -> int:
        """How many are waiting on this clock (a test's way to know a loop is parked)."""
        return len(self._sleepers)

    def advance(self, seconds: float) -> int:
        """Move time forward and wake every sleeper whose time has come; how many woke."""
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")
        self._now += seconds
        due = [s for s in self._sleepers if s[0] <= self._now]
        for entry in due:
            self._sleepers.remove(entry)
            if not entry[1].done():
                entry[1].set_result(None)
        return len(due)
