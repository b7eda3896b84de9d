"""In-memory stand-ins of warngate's own interfaces, for unit tests of adapters and plugins."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


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
    ) -> None:
        self.receipts.append(
            {"delivery_id": delivery_id, "provider_ref": provider_ref, "status": status,
             "detail": detail}
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
    ) -> None:
        self.acks.append(
            {"delivery_id": delivery_id, "provider_ref": provider_ref, "phone": phone,
             "via": via, "detail": detail}
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
