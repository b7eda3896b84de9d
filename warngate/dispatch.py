"""Moves deliveries from *planned* to *sent* / *failed*, one lane per adapter.

A lane claims due deliveries in batches (one statement, ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL) with a lease, renders them, and hands them to ``concurrency`` workers behind a
token-bucket rate limit. Results are written back in bulk. A claim whose lease runs out
(the process died) is taken again: at-least-once, because a warning delivered twice beats
a warning lost. Claims order by priority (level, then responsible people before
households), then by rank within the village, so the first seconds reach every village.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate import silent
from warngate.adapter import (
    Adapter,
    AuthError,
    Outbound,
    PermanentError,
    SendResult,
    TransientError,
)
from warngate.delivery import (
    Batch,
    Event,
    clean_text,
    escalate_now_if_waiting,
    move,
    move_selected,
    p_float,
    p_id,
    p_str,
    p_text,
    record,
)
from warngate.messages import AlertText, render, render_escalation, render_silent
from warngate.phone import mask
from warngate.settings import AdapterSettings, DispatchSettings
from warngate.store import Store
from warngate.store.schema import LIVE_ALERT_STATES, alerts, contacts, deliveries
from warngate.waiting import wait_set

log = logging.getLogger(__name__)

_LIVE_ALERT_STATES = frozenset(LIVE_ALERT_STATES)


class RateLimiter:
    """Token bucket; a small burst keeps the long-run rate within a percent of ``rate``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate * 0.02)
        self._tokens = self.capacity
        self._stamp = time.monotonic()

    async def acquire(self) -> None:
        # No await between the check and the take: atomic under asyncio, so no lock.
        while True:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / self.rate)


@dataclass(frozen=True, slots=True)
class _Result:
    delivery_id: int
    outcome: str  # sent | delivered | retry | failed | cancelled | released
    provider_ref: str | None = None
    error: str | None = None
    retry_at: float | None = None


AckUrl = Callable[[int], str]


class Lane:
    """Everything one adapter sends goes through its lane."""

    def __init__(
        self,
        store: Store,
        adapter: Adapter,
        settings: AdapterSettings,
        dispatch: DispatchSettings,
        *,
        ack_url: AckUrl,
    ) -> None:
        self.store = store
        self.adapter = adapter
        self.settings = settings
        self.dispatch = dispatch
        self.ack_url = ack_url
        self.limiter = RateLimiter(settings.rate_per_second)
        self.wake = asyncio.Event()
        self.counts: Counter[str] = Counter()
        self._queue: asyncio.Queue[Outbound] = asyncio.Queue()
        self._results: list[_Result] = []
        self._flushed = asyncio.Event()
        self._alert_text: dict[int, AlertText] = {}
        self._rendered: dict[tuple[int, str, str], tuple[str, str]] = {}
        # Never hold more than a quarter of a lease's worth of sending in memory, or slow
        # lanes would see their own claims expire and be taken again.
        self.claim_size = max(
            1,
            min(dispatch.batch_size, int(settings.rate_per_second * dispatch.lease / 4)),
        )

    @property
    def channel(self) -> str:
        return self.settings.channel

    async def run(self) -> None:
        """Feed, send and record until cancelled; a crash of any part stops the lane."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._feed(), name=f"lane-{self.channel}-feed")
            tg.create_task(self._flush_loop(), name=f"lane-{self.channel}-flush")
            for i in range(self.settings.concurrency):
                tg.create_task(self._work(), name=f"lane-{self.channel}-worker-{i}")

    # -- claiming -------------------------------------------------------------------------

    async def _feed(self) -> None:
        while True:
            if self._queue.qsize() >= self.claim_size:
                await asyncio.sleep(0.005)
                continue
            try:
                ready = await self.claim_batch()
            except Exception:
                log.exception("lane %s: claim failed; retrying", self.channel)
                await asyncio.sleep(1.0)
                continue
            if ready:
                for message in ready:
                    self._queue.put_nowait(message)
                continue
            self.wake.clear()
            await wait_set(self.wake, self.dispatch.idle_poll)

    async def claim_batch(self) -> list[Outbound]:
        """Claim due deliveries and render them; cancelled alerts' rows are settled here."""
        now = time.time()
        due = (
            select(deliveries.c.id)
            .where(
                deliveries.c.channel == self.channel,
                deliveries.c.due_at <= now,
            )
            .order_by(deliveries.c.priority, deliveries.c.village_rank)
            .limit(self.claim_size)
        )
        if self.store.is_postgres:
            due = due.with_for_update(skip_locked=True)
        stmt = (
            move_selected(
                Event.CLAIMED, due,
                lease_until=now + self.dispatch.lease, attempts=deliveries.c.attempts + 1,
            )
            .returning(
                deliveries.c.id, deliveries.c.alert_id, deliveries.c.kind,
                deliveries.c.contact_id, deliveries.c.speaker_id, deliveries.c.attempts,
                deliveries.c.ack_required, deliveries.c.priority, deliveries.c.village_rank,
                # Whom an escalation or a duty officers' alarm is about.
                deliveries.c.on_behalf_of, deliveries.c.township_code,
                deliveries.c.created_at,
            )
        )
        async with self.store.write() as conn:
            rows = list((await conn.execute(stmt)).all())
        if not rows:
            return []
        rows.sort(key=lambda r: (r.priority, r.village_rank))
        # Rendering reads outside the write transaction: on SQLite the write lock is the
        # scarce thing, and readers run beside the writer (WAL).
        async with self.store.read() as conn:
            return await self._render(conn, rows)

    async def _render(self, conn: AsyncConnection, rows: Sequence[Any]) -> list[Outbound]:
        alert_ids = {r.alert_id for r in rows}
        states = dict(
            (await conn.execute(
                select(alerts.c.id, alerts.c.state).where(alerts.c.id.in_(alert_ids))
            )).all()
        )
        if len(self._alert_text) > 1000:  # a long-running service sees many alerts
            self._alert_text.clear()
            self._rendered.clear()
        missing = [a for a in alert_ids if a not in self._alert_text]
        if missing:
            for a in (await conn.execute(select(alerts).where(alerts.c.id.in_(missing)))).all():
                self._alert_text[a.id] = AlertText.from_row(a)
        contact_ids = [r.contact_id for r in rows if r.contact_id is not None]
        people: dict[int, tuple[str, str]] = {}
        for i in range(0, len(contact_ids), 900):
            part = contact_ids[i : i + 900]
            for c in await conn.execute(
                select(contacts.c.id, contacts.c.phone, contacts.c.lang).where(
                    contacts.c.id.in_(part)
                )
            ):
                people[c.id] = (c.phone, c.lang)
        # Escalations name the person who did not answer, alarms the people still silent:
        # one query each per batch, and only when the batch holds such rows.
        behalf = {r.on_behalf_of for r in rows if r.on_behalf_of is not None}
        named = await silent.people(conn, behalf) if behalf else {}
        alarm_keys = list({(r.alert_id, r.township_code, r.created_at)
                           for r in rows if r.kind == "silent"})
        alarms = await silent.silent_lists(conn, alarm_keys) if alarm_keys else {}
        out: list[Outbound] = []
        for r in rows:
            if r.kind != "cancel" and states.get(r.alert_id) not in _LIVE_ALERT_STATES:
                # Cancelled, superseded or expired while queued: do not send the warning.
                self._results.append(_Result(r.id, "cancelled", error="alert no longer live"))
                continue
            text = self._alert_text[r.alert_id]
            if r.speaker_id is not None:
                address, lang = r.speaker_id, "zh-CN"
            elif r.contact_id in people:
                address, lang = people[r.contact_id]
            else:
                self._results.append(_Result(r.id, "failed", error="recipient left registry"))
                continue
            if r.kind == "silent":
                headline, body = render_silent(
                    text, lang, alarms.get((r.alert_id, r.township_code, r.created_at), []))
            elif r.on_behalf_of is not None and r.on_behalf_of in named:
                headline, body = render_escalation(text, lang, named[r.on_behalf_of])
            else:
                key = (r.alert_id, r.kind, lang)
                rendered = self._rendered.get(key)
                if rendered is None:
                    rendered = self._rendered[key] = render(text, r.kind, lang)
                headline, body = rendered
            out.append(
                Outbound(
                    delivery_id=r.id, alert_id=r.alert_id, kind=r.kind, channel=self.channel,
                    address=address, level=text.level, headline=headline, text=body,
                    lang=lang, ack_url=self.ack_url(r.id) if r.ack_required else None,
                    ack_required=r.ack_required, attempt=r.attempts, expires=text.expires,
                )
            )
        return out

    # -- sending --------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            message = await self._queue.get()
            await self.limiter.acquire()
            result = await self._send_one(message)
            # Look the list up after the await: a flush may have swapped it meanwhile.
            self._results.append(result)
            if len(self._results) >= self.dispatch.batch_size:
                self._flushed.set()

    async def _send_one(self, message: Outbound) -> _Result:
        retry = self.settings.retry
        try:
            result: SendResult = await self.adapter.send(message)
        except TransientError as exc:
            if message.attempt >= retry.max_attempts:
                return _Result(message.delivery_id, "failed", error=f"gave up: {exc}")
            delay = min(retry.max_delay, retry.base_delay * 2 ** (message.attempt - 1))
            delay = random.uniform(delay / 2, delay)
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            return _Result(
                message.delivery_id, "retry", error=str(exc), retry_at=time.time() + delay
            )
        except AuthError as exc:
            # Every message will fail the same way until someone fixes the credentials:
            # keep them queued (no attempt burnt) and shout.
            log.error("lane %s: provider refused our credentials: %s", self.channel, exc)
            return _Result(
                message.delivery_id, "retry", error=f"auth: {exc}",
                retry_at=time.time() + retry.max_delay,
            )
        except PermanentError as exc:
            log.info("lane %s: %s permanently failed: %s", self.channel,
                     mask(message.address) if self.channel != "speaker" else message.address,
                     exc)
            return _Result(message.delivery_id, "failed", error=str(exc))
        except Exception as exc:  # an adapter bug must not kill the lane or lose the row
            log.exception("lane %s: adapter raised unexpectedly", self.channel)
            return _Result(
                message.delivery_id, "retry", error=f"adapter error: {exc!r}",
                retry_at=time.time() + retry.base_delay,
            )
        return _Result(
            message.delivery_id,
            "delivered" if result.delivered else "sent",
            provider_ref=result.provider_ref,
        )

    # -- recording ------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        try:
            while True:
                await wait_set(self._flushed, 0.05)
                self._flushed.clear()
                await self.flush()
        finally:
            # Cancelled at shutdown: whatever was sent must still be written down, and what
            # was claimed but never handed to a worker goes back to the queue at once
            # (not a lease later, and not counted as an attempt).
            while not self._queue.empty():
                self._results.append(_Result(self._queue.get_nowait().delivery_id, "released"))
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        if not self._results:
            return
        batch, self._results = self._results, []
        try:
            async with self.store.write() as conn:
                await write_results(conn, batch)
        except asyncio.CancelledError:
            # Stopped mid-write: rolled back, so keep the batch for the last flush.
            self._results[:0] = batch
            raise
        except Exception:
            log.exception("lane %s: could not record %d results; will retry", self.channel,
                          len(batch))
            self._results[:0] = batch
            await asyncio.sleep(0.5)
            return
        for r in batch:
            self.counts[r.outcome] += 1


async def write_results(conn: AsyncConnection, batch: Sequence[_Result]) -> None:
    """Record send outcomes; a receipt that already moved a row on is not undone.

    Rows are written in id order: two writers that lock the same rows in the same order
    cannot deadlock each other.
    """
    now = time.time()
    by_event: dict[Event, list[dict[str, Any]]] = {}
    for r in sorted(batch, key=lambda r: r.delivery_id):
        event = _OUTCOME_EVENT[r.outcome]
        by_event.setdefault(event, []).append({
            "b_id": r.delivery_id, "b_ref": clean_text(r.provider_ref, 64),
            "b_error": clean_text(r.error), "b_at": r.retry_at, "b_now": now})
    for event, params in by_event.items():
        await _RESULT_MOVES[event].run(conn, params)


_OUTCOME_EVENT = {
    "sent": Event.SENT,
    "delivered": Event.SENT_DELIVERED,
    "retry": Event.SEND_RETRY,
    "failed": Event.SEND_FAILED,
    "cancelled": Event.DROPPED,
    "released": Event.RELEASED,
}
_BY_ID = deliveries.c.id == p_id()
_RESULT_MOVES = {k: Batch(v) for k, v in {
    # The provider's reference is kept even where a fast receipt already moved the row on:
    # later receipts find the row by it.
    Event.SENT: record(Event.SENT, _BY_ID, provider_ref=p_str("b_ref"),
                       sent_at=p_float("b_now"), lease_until=None),
    Event.SENT_DELIVERED: record(Event.SENT_DELIVERED, _BY_ID, provider_ref=p_str("b_ref"),
                                 sent_at=p_float("b_now"), lease_until=None,
                                 delivered_at=func.coalesce(deliveries.c.delivered_at,
                                                            p_float("b_now"))),
    Event.SEND_RETRY: move(Event.SEND_RETRY, _BY_ID, due_at=p_float("b_at"),
                           last_error=p_text("b_error"), lease_until=None),
    # A responsible person who cannot be reached takes the next step now.
    Event.SEND_FAILED: move(Event.SEND_FAILED, _BY_ID, last_error=p_text("b_error"),
                            lease_until=None, escalate_at=escalate_now_if_waiting()),
    Event.RELEASED: move(Event.RELEASED, _BY_ID, lease_until=None,
                         attempts=deliveries.c.attempts - 1),
    # Not sent, nothing more to do for it: no escalation, no repeat.
    Event.DROPPED: move(Event.DROPPED, _BY_ID, last_error=p_text("b_error"),
                        lease_until=None, escalate_at=None),
}.items()}


async def requeue_due(store: Store) -> int:
    """Retries whose time has come, and claims whose lease ran out, become *planned* again.

    On PostgreSQL rows a result writer holds are skipped (and taken at the next pass), so
    the requeue never deadlocks with the lanes' result writes.
    """
    now = time.time()
    retry_due = select(deliveries.c.id).where(deliveries.c.due_at <= now)
    lease_over = select(deliveries.c.id).where(deliveries.c.lease_until < now)
    if store.is_postgres:
        retry_due = retry_due.order_by(deliveries.c.id).with_for_update(skip_locked=True)
        lease_over = lease_over.order_by(deliveries.c.id).with_for_update(skip_locked=True)
    async with store.write() as conn:
        a = await conn.execute(move_selected(Event.REQUEUED, retry_due))
        b = await conn.execute(move_selected(Event.LEASE_EXPIRED, lease_over,
                                             due_at=now, lease_until=None))
    n = max(a.rowcount, 0) + max(b.rowcount, 0)
    if b.rowcount and b.rowcount > 0:
        log.warning("%d deliveries were claimed by a process that stopped; sending again",
                    b.rowcount)
    return n


class Dispatcher:
    """All lanes, plus the periodic requeue of retries and expired leases."""

    def __init__(self, store: Store, lanes: Sequence[Lane]) -> None:
        self.store = store
        self.lanes = {lane.channel: lane for lane in lanes}

    def wake(self) -> None:
        for lane in self.lanes.values():
            lane.wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for lane in self.lanes.values():
                tg.create_task(lane.run(), name=f"lane-{lane.channel}")
            tg.create_task(self._requeue_loop(), name="dispatch-requeue")

    async def _requeue_loop(self) -> None:
        while True:
            try:
                if await requeue_due(self.store):
                    self.wake()
            except Exception:
                log.exception("requeue failed; retrying")
            await asyncio.sleep(1.0)
