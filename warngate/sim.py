"""Simulated providers for the demo, the tests and the benchmarks.

A simulated population behaves the same way every run for the same seed: a number is
either reachable or not, a person either answers a given alert or not, each after a delay
drawn from its own hash. So the demo shows escalation reliably, and tests can predict it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import zlib
from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from warngate.adapter import (
    BaseAdapter,
    Outbound,
    PermanentError,
    ReceiptSink,
    SendResult,
)
from warngate.adapter_options import parse_options
from warngate.settings import AdapterSettings
from warngate.waiting import cancel_and_wait, wait_set


class SimOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    #: Seconds from send to the delivery receipt, as (min, max).
    delivery_delay: tuple[float, float] = (0.0, 0.0)
    #: Share of addresses that never receive anything (switched off, wrong number).
    unreachable_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Share of addresses the provider refuses outright at send time (``PermanentError``,
    #: like Twilio's 21211 "invalid number" or 21610 "unsubscribed"): no receipt follows.
    permanent_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Share of people who acknowledge a message that asks for it.
    ack_probability: float = Field(default=1.0, ge=0.0, le=1.0)
    ack_delay: tuple[float, float] = (0.0, 0.0)

    def refuses(self, address: str) -> bool:
        """The provider rejects every message to ``address`` (checked before reachability)."""
        return self.permanent_rate > 0 and (
            _fraction(self.seed, "permanent", address) < self.permanent_rate)

    def reaches(self, address: str) -> bool:
        """A message the provider took for ``address`` arrives (else a failure receipt)."""
        return self.unreachable_rate <= 0 or _fraction(self.seed, address) >= self.unreachable_rate


def _fraction(*parts: object) -> float:
    """A stable number in [0, 1) for these parts (crc32: fast, and stable across runs)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) / 2**32


class _SimAdapter(BaseAdapter):
    reached_status: ClassVar[str] = "delivered"
    unreached_status: ClassVar[str] = "undelivered"
    ack_via: ClassVar[str] = "link"

    def __init__(self, settings: AdapterSettings) -> None:
        super().__init__(settings)
        self.options = parse_options(SimOptions, settings)
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ref = itertools.count(1)
        self.sent = 0

    async def start(self, receipts: ReceiptSink) -> None:
        await super().start(receipts)
        self._task = asyncio.create_task(self._run(), name=f"sim-{self.name}-events")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        if delay <= 0:
            action()
            return
        heapq.heappush(self._events, (time.monotonic() + delay, next(self._seq), action))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            while self._events and self._events[0][0] <= now:
                heapq.heappop(self._events)[2]()
            self._wake.clear()
            timeout = self._events[0][0] - now if self._events else None
            await wait_set(self._wake, timeout)

    def _delay(self, bounds: tuple[float, float], *parts: object) -> float:
        low, high = bounds
        if high <= low:
            return low
        return low + (high - low) * _fraction(self.options.seed, "delay", *parts)

    async def _send(self, message: Outbound) -> SendResult:
        sink = self.receipts
        if sink is None:
            raise RuntimeError(f"adapter {self.name} used before start()")
        o = self.options
        if o.refuses(message.address):
            raise PermanentError(f"simulated provider refuses {message.address} (invalid number)")
        self.sent += 1
        ref = f"SIM{self.channel[:2].upper()}{next(self._ref):010d}"
        reachable = o.reaches(message.address)
        delay = self._delay(o.delivery_delay, message.address, message.delivery_id)
        if not reachable:
            self._later(delay, lambda: sink.receipt(
                provider_ref=ref, delivery_id=message.delivery_id, status=self.unreached_status))
            return SendResult(provider_ref=ref)
        self._later(delay, lambda: sink.receipt(
            provider_ref=ref, delivery_id=message.delivery_id, status=self.reached_status))
        if message.ack_required and message.kind != "cancel":
            answers = _fraction(o.seed, "ack", message.address, message.alert_id,
                                self.channel) < o.ack_probability
            if answers:
                ack_delay = delay + self._delay(o.ack_delay, "ack", message.address,
                                                message.alert_id)
                self._later(ack_delay, lambda: sink.acknowledge(
                    delivery_id=message.delivery_id, provider_ref=ref, via=self.ack_via))
        return SendResult(provider_ref=ref)


class SimSmsAdapter(_SimAdapter):
    """SMS: delivered or undelivered; people acknowledge through the link or a reply."""

    channels = ("sms",)
    ack_via = "link"


class SimVoiceAdapter(_SimAdapter):
    """Voice calls: answered or not; answering people press 1."""

    channels = ("voice",)
    reached_status = "answered"
    unreached_status = "no_answer"
    ack_via = "dtmf"


class SimSpeakerAdapter(_SimAdapter):
    """Loudspeakers: every reachable speaker plays, and ``played`` acknowledges it."""

    channels = ("speaker",)
    reached_status = "played"
    unreached_status = "failed"
    ack_via = "speaker"

    async def _send(self, message: Outbound) -> SendResult:
        if message.kind == "cancel":
            return SendResult(provider_ref=str(message.delivery_id), delivered=True)
        sink = self.receipts
        if sink is None:
            raise RuntimeError(f"adapter {self.name} used before start()")
        o = self.options
        if o.refuses(message.address):
            raise PermanentError(f"simulated speaker {message.address} refuses commands")
        reachable = o.reaches(message.address)
        delay = self._delay(o.delivery_delay, message.address, message.delivery_id)
        did = message.delivery_id
        if reachable:
            def played() -> None:
                sink.receipt(delivery_id=did, status="played")
                sink.acknowledge(delivery_id=did, via="speaker")
            self._later(delay, played)
        else:
            self._later(delay, lambda: sink.speaker_status(message.address, online=False))
        return SendResult(provider_ref=str(did))
