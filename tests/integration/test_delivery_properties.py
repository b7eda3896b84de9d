"""Random event sequences against the real statements, on both backends: receipts out of
order, duplicated, after a cancel; crashes (leases running out) and requeues in between.

After every step each delivery either kept its state or made a move the transition table
allows; after the drain nothing is left pending. Sequences come from fixed seeds, so CI
replays the same ones; ``WARNGATE_PROPERTY_SEQUENCES`` asks for more.
"""

from __future__ import annotations

import os
import random
import time

from sqlalchemy import insert, select, update

from tests.integration.test_delivery_states import make_alert
from warngate.adapter import ProviderEvent
from warngate.alerts import cancel_in
from warngate.delivery import PENDING, TRANSITIONS
from warngate.delivery import DeliveryState as S
from warngate.dispatch import Lane, _Result, requeue_due, write_results
from warngate.receipts import ReceiptWriter
from warngate.settings import AdapterSettings, DispatchSettings
from warngate.sim import SimSmsAdapter
from warngate.store import Store
from warngate.store.schema import alerts, contacts, deliveries

SEQUENCES = int(os.environ.get("WARNGATE_PROPERTY_SEQUENCES", "12"))
STEPS = 14
PEOPLE = 4
#: (from, to) pairs some event allows.
ALLOWED = {(src, t.target) for t in TRANSITIONS.values() for src in t.sources}


async def snapshot(store: Store, alert_id: int) -> dict[int, S]:
    async with store.read() as conn:
        return {r.id: S(r.state) for r in await conn.execute(
            select(deliveries.c.id, deliveries.c.state)
            .where(deliveries.c.alert_id == alert_id))}


def check_moves(before: dict[int, S], after: dict[int, S], step: str) -> None:
    for did, state in after.items():
        if did not in before:
            assert state == S.PLANNED, f"{step}: new delivery {did} born {state}"
        elif before[did] != state:
            assert (before[did], state) in ALLOWED, (
                f"{step}: delivery {did} moved {before[did]} → {state}, which no event allows")
    assert set(before) <= set(after), f"{step}: deliveries vanished"


async def setup(store: Store, seed: int) -> tuple[int, list[int]]:
    alert_id = await make_alert(store, identifier=f"prop-{seed}")
    now = time.time()
    async with store.write() as conn:
        people = [int(i) for i in (await conn.execute(
            insert(contacts).returning(contacts.c.id),
            [{"external_id": f"p{seed}-{i}", "name": f"网格员{i}",
              "phone": f"+861700000{seed:03d}{i}", "role": "grid_worker",
              "region_code": "339901001001", "township_code": "339901001",
              "village_code": "339901001001"} for i in range(PEOPLE)])).scalars()]
        ids = [int(i) for i in (await conn.execute(
            insert(deliveries).returning(deliveries.c.id),
            [{"alert_id": alert_id, "contact_id": p, "role": "grid_worker", "channel": "sms",
              "state": "planned", "priority": 1, "due_at": now, "ack_required": True,
              "escalate_at": now + 600, "township_code": "339901001",
              "village_code": "339901001001", "created_at": now} for p in people])).scalars()]
    return alert_id, ids


async def one_step(rng: random.Random, store: Store, lane: Lane, writer: ReceiptWriter,
                   alert_id: int, ids: list[int]) -> str:
    op = rng.choice(["claim", "claim", "result", "result", "receipt", "receipt", "ack",
                     "crash", "retry_due", "cancel"])
    did = rng.choice(ids)
    if op == "claim":
        await lane.claim_batch()
        await lane.flush()
    elif op == "result":
        outcome = rng.choice(["sent", "delivered", "retry", "failed", "cancelled"])
        async with store.write() as conn:
            await write_results(conn, [_Result(did, outcome, provider_ref=f"SM{did}",
                                               error="x", retry_at=time.time() + 3600)])
        op = f"result {outcome} for {did}"
    elif op == "receipt":
        status = rng.choice(["queued", "sent", "delivered", "undelivered", "failed",
                             "no-answer"])
        # Sometimes the very same provider event again: it must change nothing.
        key = f"SM{did}:{status}" if rng.random() < 0.5 else f"{rng.random()}"
        writer.receipt(delivery_id=did, status=status, event=ProviderEvent("sms", key))
        await writer.flush()
        op = f"receipt {status} for {did}"
    elif op == "ack":
        writer.acknowledge(delivery_id=did, via="link")
        await writer.flush()
        op = f"ack for {did}"
    elif op == "crash":  # the process holding the leases died
        async with store.write() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.lease_until.is_not(None))
                               .values(lease_until=time.time() - 1))
        await requeue_due(store)
    elif op == "retry_due":
        async with store.write() as conn:
            await conn.execute(update(deliveries).values(due_at=time.time() - 1))
        await requeue_due(store)
    elif op == "cancel":
        async with store.write() as conn:
            row = (await conn.execute(select(alerts).where(alerts.c.id == alert_id))).one()
            if row.state in ("dispatching", "active"):
                await cancel_in(conn, row, "prop", time.time())
    return op


async def drain(store: Store, lane: Lane) -> None:
    """Everything still pending runs out: leases end, retries come due, lanes send."""
    for _ in range(20):
        async with store.write() as conn:
            await conn.execute(update(deliveries).values(due_at=time.time() - 1))
            await conn.execute(update(deliveries).where(deliveries.c.lease_until.is_not(None))
                               .values(lease_until=time.time() - 1))
        await requeue_due(store)
        claimed = await lane.claim_batch()
        await lane.flush()
        if claimed:
            async with store.write() as conn:
                await write_results(conn, [_Result(m.delivery_id, "sent") for m in claimed])
        async with store.read() as conn:
            left = (await conn.execute(select(deliveries.c.id).where(
                deliveries.c.state.in_([s.value for s in PENDING])))).all()
        if not left:
            return
    raise AssertionError(f"still pending after the drain: {left}")


async def test_random_event_sequences_make_only_allowed_moves(store: Store) -> None:
    settings = AdapterSettings(name="sms", type="sim-sms", channel="sms")
    lane = Lane(store, SimSmsAdapter(settings), settings,
                DispatchSettings(lease=60, batch_size=PEOPLE), ack_url=lambda d: f"/ack/{d}")
    for seed in range(SEQUENCES):
        rng = random.Random(seed)
        alert_id, ids = await setup(store, seed)
        writer = ReceiptWriter(store)
        history: list[str] = []
        for _ in range(STEPS):
            before = await snapshot(store, alert_id)
            history.append(await one_step(rng, store, lane, writer, alert_id, ids))
            check_moves(before, await snapshot(store, alert_id), f"seed {seed}: {history}")
        before = await snapshot(store, alert_id)
        await drain(store, lane)
        after = await snapshot(store, alert_id)
        check_moves(before, after, f"seed {seed} drain after {history}")
        assert not any(s in PENDING for s in after.values())
        assert not writer._pending, f"seed {seed}: receipts left unwritten"
