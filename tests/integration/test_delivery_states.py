"""The delivery state machine on both backends: the failures that stopped PostgreSQL from
recording (issue 8, items 1, 2 and 5), each written the way the service writes it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from sqlalchemy import func, insert, select, update

from warngate.adapter import Outbound, ProviderEvent
from warngate.delivery import DeliveryState as S
from warngate.delivery import new_row
from warngate.dispatch import Lane, _Result, requeue_due, write_results
from warngate.receipts import ReceiptWriter
from warngate.settings import AdapterSettings, DispatchSettings
from warngate.sim import SimSmsAdapter
from warngate.store import Store
from warngate.store.schema import (
    acknowledgements,
    alerts,
    deliveries,
    provider_events,
    receipts,
    rejected_inputs,
)
from warngate.waiting import cancel_and_wait


async def make_alert(store: Store, *, state: str = "active", identifier: str = "a1") -> int:
    now = time.time()
    async with store.write() as conn:
        res = await conn.execute(insert(alerts).values(
            source="composer", sender="test", identifier=identifier,
            sent="2026-12-02T08:00:00+08:00",
            level="red", event="暴雨", headline="暴雨红色预警", areas=["339901001"],
            state=state, created_by="test", created_at=now, updated_at=now,
        ).returning(alerts.c.id))
        return int(res.scalar_one())


async def make_deliveries(store: Store, alert_id: int, n: int, *, state: S = S.SENDING,
                          ack_required: bool = True, **extra: Any) -> list[int]:
    now = time.time()
    rows = [new_row(alert_id=alert_id, contact_id=1000 + i, role="grid_worker", channel="sms",
                    priority=1, due_at=now, ack_required=ack_required,
                    escalate_at=now + 600 if ack_required else None, created_at=now, **extra)
            for i in range(n)]
    async with store.write() as conn:
        ids = [int(i) for i in (await conn.execute(
            insert(deliveries).returning(deliveries.c.id), rows)).scalars()]
        await conn.execute(update(deliveries).where(deliveries.c.id.in_(ids))
                           .values(state=state.value, lease_until=now + 60, attempts=1))
    return ids


async def states(store: Store, ids: list[int]) -> dict[int, Any]:
    async with store.read() as conn:
        return {r.id: r for r in await conn.execute(
            select(deliveries).where(deliveries.c.id.in_(ids)))}


async def count(store: Store, table: Any) -> int:
    async with store.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_failed_and_cancelled_send_results_are_recorded(store: Store) -> None:
    """Item 2: a permanent failure or a dropped (alert no longer live) send is written, and
    the failed one's escalation is pulled forward — on PostgreSQL too."""
    alert_id = await make_alert(store)
    ok, failed, dropped, retry = await make_deliveries(store, alert_id, 4)
    before = time.time()
    async with store.write() as conn:
        await write_results(conn, [
            _Result(ok, "sent", provider_ref="SM1"),
            _Result(failed, "failed", error="Twilio error 21211: invalid 'To'"),
            _Result(dropped, "cancelled", error="alert no longer live"),
            _Result(retry, "retry", error="429", retry_at=before + 30),
        ])
    got = await states(store, [ok, failed, dropped, retry])
    assert got[ok].state == S.SENT and got[ok].provider_ref == "SM1"
    assert got[failed].state == S.FAILED and "21211" in got[failed].last_error
    assert got[failed].escalate_at is not None and got[failed].escalate_at <= time.time()
    assert got[dropped].state == S.CANCELLED and got[dropped].escalate_at is None
    assert got[retry].state == S.RETRY and got[retry].due_at >= before + 30
    assert all(r.lease_until is None for r in got.values())


async def test_requeue_takes_back_expired_leases_and_due_retries(store: Store) -> None:
    alert_id = await make_alert(store)
    [stale] = await make_deliveries(store, alert_id, 1)
    [due] = await make_deliveries(store, alert_id, 1, state=S.RETRY)
    async with store.write() as conn:
        await conn.execute(update(deliveries).where(deliveries.c.id == stale)
                           .values(lease_until=time.time() - 1))
        await conn.execute(update(deliveries).where(deliveries.c.id == due)
                           .values(due_at=time.time() - 1))
    assert await requeue_due(store) == 2
    got = await states(store, [stale, due])
    assert got[stale].state == S.PLANNED and got[stale].lease_until is None
    assert got[due].state == S.PLANNED


async def test_a_failed_receipt_does_not_stop_the_writer(store: Store) -> None:
    """Item 1: after an undelivered / no-answer receipt, every later receipt and
    acknowledgement is still stored."""
    alert_id = await make_alert(store)
    failed, acked, delivered = await make_deliveries(store, alert_id, 3, state=S.SENT)
    writer = ReceiptWriter(store)
    writer.receipt(delivery_id=failed, status="undelivered", detail="Twilio error 30003")
    writer.receipt(delivery_id=delivered, status="delivered")
    writer.acknowledge(delivery_id=acked, via="link")
    await writer.flush()
    assert not writer._pending
    got = await states(store, [failed, acked, delivered])
    assert got[failed].state == S.FAILED
    assert got[failed].escalate_at is not None and got[failed].escalate_at <= time.time()
    assert got[acked].state == S.ACKNOWLEDGED
    assert got[delivered].state == S.DELIVERED
    assert await count(store, receipts) == 2
    assert await count(store, acknowledgements) == 1


async def test_a_nul_character_is_kept_not_a_poison_batch(store: Store) -> None:
    """A signed status with NUL in MessageStatus must not block everyone's receipts."""
    alert_id = await make_alert(store)
    odd, fine = await make_deliveries(store, alert_id, 2, state=S.SENT)
    writer = ReceiptWriter(store)
    writer.receipt(delivery_id=odd, status="deliv\x00ered", detail="a\x00b")
    writer.receipt(delivery_id=fine, status="delivered")
    await writer.flush()
    assert not writer._pending
    got = await states(store, [odd, fine])
    assert got[fine].state == S.DELIVERED
    assert await count(store, receipts) == 2


async def test_a_batch_the_store_refuses_is_split_and_the_culprit_kept(store: Store) -> None:
    """Whatever an item carries that the store refuses, the others are recorded and the
    culprit lands in rejected_inputs instead of being retried forever."""
    alert_id = await make_alert(store)
    a, b = await make_deliveries(store, alert_id, 2, state=S.SENT)
    writer = ReceiptWriter(store)
    writer.receipt(delivery_id=a, status="delivered")
    # Longer than the receipts.detail column allows nowhere, but a via longer than its
    # column is refused by PostgreSQL: the one item that cannot be stored.
    writer.acknowledge(delivery_id=b, via="link", detail="x")
    writer._pending[-1].data["via"] = "v" * 40
    await writer.flush()
    assert not writer._pending
    got = await states(store, [a, b])
    assert got[a].state == S.DELIVERED
    if store.is_postgres:  # SQLite does not enforce VARCHAR lengths
        assert got[b].state == S.SENT
        assert await count(store, rejected_inputs) == 1


async def test_provider_events_are_taken_once_across_restarts(store: Store) -> None:
    """Item 5: a status callback or a signed "1" reply replayed after a restart (a new
    writer: nothing in memory) has no second effect."""
    alert_id = await make_alert(store)
    [first] = await make_deliveries(store, alert_id, 1, state=S.SENT)
    writer = ReceiptWriter(store)
    writer.receipt(delivery_id=first, status="delivered",
                   event=ProviderEvent("sms", "SM1:delivered"))
    writer.acknowledge(phone=None, delivery_id=first, via="sms_reply",
                       event=ProviderEvent("sms", "inbound:SM9"))
    await writer.flush()
    # The same person's next warning.
    second_alert = await make_alert(store, identifier="a2")
    [second] = await make_deliveries(store, second_alert, 1, state=S.SENT)
    restarted = ReceiptWriter(store)
    restarted.receipt(delivery_id=first, status="delivered",
                      event=ProviderEvent("sms", "SM1:delivered"))
    restarted.acknowledge(delivery_id=second, via="sms_reply",
                          event=ProviderEvent("sms", "inbound:SM9"))
    # Twice in one batch counts once as well.
    restarted.receipt(delivery_id=second, status="sent", event=ProviderEvent("sms", "SM2:sent"))
    restarted.receipt(delivery_id=second, status="sent", event=ProviderEvent("sms", "SM2:sent"))
    await restarted.flush()
    assert await count(store, receipts) == 2  # SM1:delivered once, SM2:sent once
    assert await count(store, acknowledgements) == 1
    got = await states(store, [second])
    assert got[second].state == S.SENT
    assert await count(store, provider_events) == 3


async def test_no_acknowledgement_for_a_lifted_warning(store: Store) -> None:
    """A link or reply after cancel, expiry or supersede acknowledges nothing, and is kept."""
    for i, state in enumerate(("cancelled", "expired", "superseded")):
        alert_id = await make_alert(store, state=state, identifier=f"lifted-{i}")
        [d] = await make_deliveries(store, alert_id, 1, state=S.DELIVERED)
        writer = ReceiptWriter(store)
        writer.acknowledge(delivery_id=d, via="link")
        await writer.flush()
        assert (await states(store, [d]))[d].state == S.DELIVERED
    assert await count(store, acknowledgements) == 0
    assert await count(store, rejected_inputs) == 3


async def test_a_flush_cancelled_mid_write_keeps_its_batch(store: Store) -> None:
    """Shutdown cancels the writer while it waits on the store: the batch it had taken must
    come back for the last flush, not vanish with the rolled-back transaction."""
    alert_id = await make_alert(store)
    [d] = await make_deliveries(store, alert_id, 1, state=S.SENT)
    writer = ReceiptWriter(store)
    writer.receipt(delivery_id=d, status="delivered")
    async with store.write() as conn:  # another writer holds the row (SQLite: the store)
        await conn.execute(select(deliveries.c.id).where(deliveries.c.id == d)
                           .with_for_update())
        task = asyncio.create_task(writer.flush())
        await asyncio.sleep(0.3)
        assert not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await writer.flush()
    assert (await states(store, [d]))[d].state == S.DELIVERED
    assert await count(store, receipts) == 1


async def test_a_stopping_lane_hands_back_what_it_never_sent(store: Store) -> None:
    alert_id = await make_alert(store)
    ids = await make_deliveries(store, alert_id, 3)
    settings = AdapterSettings(name="sms", type="sim-sms", channel="sms")
    lane = Lane(store, SimSmsAdapter(settings), settings, DispatchSettings(),
                ack_url=lambda d: f"/ack/{d}")
    # Claimed (as claim_batch would), queued, never handed to a worker.
    for did in ids:
        lane._queue.put_nowait(Outbound(delivery_id=did, alert_id=alert_id, kind="alert",
                                        channel="sms", address="+8617000000001", level="red",
                                        headline="h", text="t"))
    flusher = asyncio.create_task(lane._flush_loop())
    await asyncio.sleep(0.1)
    await cancel_and_wait([flusher])
    got = await states(store, ids)
    assert {r.state for r in got.values()} == {S.PLANNED}
    assert {r.attempts for r in got.values()} == {0}
