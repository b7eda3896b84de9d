"""In-memory stand-ins of warngate's own interfaces, for unit tests of adapters and plugins."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from warngate.adapter import AdapterConfig, ProviderEvent


@dataclass
class RecordingSink:
    """A ``ReceiptSink`` that records every call; ``wait_for`` awaits a matching record."""

    receipts: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[tuple[str, bool]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
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

    def field_report(self, *, phone: str, text: str, via: str,
                     event: ProviderEvent | None = None) -> None:
        self.reports.append({"phone": phone, "text": text, "via": via, "event": event})
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


def adapter_config(type: str, channel: str, *, name: str | None = None, concurrency: int = 20,
                   **options: Any) -> AdapterConfig:
    """An adapter's entry as the configuration would hold it (``name`` defaults to the
    channel), for constructing an adapter in a test without a configuration file."""
    from warngate.settings import AdapterSettings  # the real model: its validation included

    return AdapterSettings(name=name or channel, type=type, channel=channel,
                           concurrency=concurrency, options=options)


def free_port() -> int:
    """A loopback port nobody listens on now (for a server whose URL must be known first)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1:``port`` (its cleanup contexts run); yields its base URL.

    ``port=0`` takes a free one; pass ``free_port()`` when the URL must be known before.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
