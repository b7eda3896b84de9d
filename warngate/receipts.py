"""Provider receipts and acknowledgements move deliveries forward, never back.

Adapters call the sink synchronously from webhooks and message loops; the sink buffers and
writes in bulk a few times a second, so a burst of ten thousand receipts is a handful of
statements. A receipt naming a provider reference we have not recorded yet (a callback that
overtook our own write) is retried for a while, then kept as rejected input with its reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.phone import mask
from warngate.store import Store
from warngate.store.schema import (
    acknowledgements,
    contacts,
    deliveries,
    rejected_inputs,
    speakers,
)
from warngate.waiting import wait_set

log = logging.getLogger(__name__)

#: Provider words → our delivery state. ``None``: recorded, state unchanged.
STATUS_STATE: dict[str, str | None] = {
    "queued": None,
    "accepted": None,
    "sending": None,
    "sent": "sent",
    "initiated": None,
    "ringing": None,
    "received": "delivered",
    "playing": "delivered",
    "delivered": "delivered",
    "answered": "delivered",
    "completed": "delivered",
    "played": "delivered",
    "read": "delivered",
    "failed": "failed",
    "undelivered": "failed",
    "no_answer": "failed",
    "no-answer": "failed",
    "busy": "failed",
    "canceled": "failed",
}
_GIVE_UP_AFTER = 30.0
# Literal, so SQLite can use the partial index on people who must answer.
_ACK_REQUIRED: ColumnElement[bool] = literal_column("ack_required")


@dataclass
class _Pending:
    kind: str  # receipt | ack
    data: dict[str, Any]
    first_seen: float = field(default_factory=time.time)


class ReceiptWriter:
    """The ``ReceiptSink`` every adapter reports to; owns a flush task while running."""

    def __init__(
        self,
        store: Store,
        *,
        on_speaker_offline: Callable[[str], None] = lambda _s: None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.on_speaker_offline = on_speaker_offline
        self.on_change = on_change
        self._pending: list[_Pending] = []
        self._statuses: dict[str, bool] = {}
        self._kick = asyncio.Event()
        self.unknown = 0

    # -- ReceiptSink ------------------------------------------------------------------------

    def receipt(
        self,
        *,
        delivery_id: int | None = None,
        provider_ref: str | None = None,
        status: str,
        detail: str | None = None,
    ) -> None:
        self._pending.append(_Pending("receipt", {
            "delivery_id": delivery_id, "provider_ref": provider_ref,
            "status": status.lower()[:24], "detail": detail, "at": time.time()}))
        if len(self._pending) >= 1000:
            self._kick.set()

    def acknowledge(
        self,
        *,
        delivery_id: int | None = None,
        provider_ref: str | None = None,
        phone: str | None = None,
        via: str,
        detail: str | None = None,
    ) -> None:
        self._pending.append(_Pending("ack", {
            "delivery_id": delivery_id, "provider_ref": provider_ref, "phone": phone,
            "via": via[:16], "detail": detail, "at": time.time()}))
        self._kick.set()

    def speaker_status(self, speaker_id: str, *, online: bool) -> None:
        self._statuses[speaker_id] = online
        self._kick.set()

    # -- writing ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await wait_set(self._kick, 0.1)
                self._kick.clear()
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        """Write everything buffered so far (tests call this directly)."""
        if not self._pending and not self._statuses:
            return
        batch, self._pending = self._pending, []
        statuses, self._statuses = self._statuses, {}
        try:
            async with self.store.write() as conn:
                retry = await self._apply(conn, batch)
                offline = await _apply_statuses(conn, statuses)
        except Exception:
            log.exception("could not record %d receipts; retrying", len(batch))
            self._pending[:0] = batch
            for k, v in statuses.items():
                self._statuses.setdefault(k, v)
            await asyncio.sleep(0.5)
            return
        self._pending[:0] = retry
        for speaker_id in offline:
            self.on_speaker_offline(speaker_id)
        if batch or statuses:
            self.on_change()

    async def _apply(self, conn: AsyncConnection, batch: Sequence[_Pending]) -> list[_Pending]:
        await _resolve_refs(conn, batch)
        await _resolve_phones(conn, [p for p in batch if p.kind == "ack"])
        retry: list[_Pending] = []
        rejected: list[dict[str, Any]] = []
        now = time.time()
        for p in batch:
            if p.data.get("delivery_id") is None:
                if p.data.get("provider_ref") and now - p.first_seen < _GIVE_UP_AFTER:
                    retry.append(p)
                else:
                    rejected.append(_rejection(p))
        ok = [p for p in batch if p.data.get("delivery_id") is not None]
        # An id no database column can hold is simply unknown, not an error that would
        # fail this batch, and every retry of it, for everyone else's receipts.
        known = await _known_ids(self.store, conn, {
            p.data["delivery_id"] for p in ok if 0 < p.data["delivery_id"] < 2**63})
        for p in ok:
            if p.data["delivery_id"] not in known:
                rejected.append(_rejection(p))
        ok = [p for p in ok if p.data["delivery_id"] in known]
        await _write_receipts(self.store, conn, [p.data for p in ok if p.kind == "receipt"])
        acks = [p.data for p in ok if p.kind == "ack"]
        if acks:
            rows = await _existing(conn, {d["delivery_id"] for d in acks})
            await _write_acks(conn, acks, rows)
        if rejected:
            self.unknown += len(rejected)
            await conn.execute(insert(rejected_inputs), rejected)
        return retry


def _rejection(p: _Pending) -> dict[str, Any]:
    data = dict(p.data)
    if data.get("phone"):
        data["phone"] = mask(data["phone"])
    what = "acknowledgement" if p.kind == "ack" else "receipt"
    return {
        "at": time.time(),
        "entry_point": f"{what} from adapter",
        "source": data.get("via") or data.get("status"),
        "reason": f"{what} names no delivery we know",
        "content_type": "application/json",
        "body": json.dumps(data, ensure_ascii=False).encode(),
    }


async def _resolve_refs(conn: AsyncConnection, batch: Sequence[_Pending]) -> None:
    refs = {p.data["provider_ref"] for p in batch
            if p.data.get("delivery_id") is None and p.data.get("provider_ref")}
    if not refs:
        return
    found: dict[str, int] = {}
    ref_list = sorted(refs)
    for i in range(0, len(ref_list), 900):
        part = ref_list[i : i + 900]
        for row in await conn.execute(
            select(deliveries.c.provider_ref, deliveries.c.id).where(
                deliveries.c.provider_ref.in_(part)
            )
        ):
            found[row.provider_ref] = row.id
    for p in batch:
        if p.data.get("delivery_id") is None and p.data.get("provider_ref") in found:
            p.data["delivery_id"] = found[p.data["provider_ref"]]


async def _resolve_phones(conn: AsyncConnection, acks: Sequence[_Pending]) -> None:
    """A reply from a number acknowledges that person's newest open delivery."""
    waiting = [p for p in acks if p.data.get("delivery_id") is None and p.data.get("phone")]
    phones = sorted({str(p.data["phone"]) for p in waiting})
    newest: dict[str, int] = {}
    for i in range(0, len(phones), 500):
        rows = await conn.execute(
            select(contacts.c.phone, func.max(deliveries.c.id))
            .join(contacts, contacts.c.id == deliveries.c.contact_id)
            .where(
                contacts.c.phone.in_(phones[i : i + 500]),
                _ACK_REQUIRED,
                deliveries.c.kind != "cancel",
                deliveries.c.acked_at.is_(None),
                deliveries.c.state.in_(("sending", "sent", "delivered")),
            )
            .group_by(contacts.c.phone)
        )
        newest.update((phone, int(delivery_id)) for phone, delivery_id in rows)
    for p in waiting:
        if (found := newest.get(str(p.data["phone"]))) is not None:
            p.data["delivery_id"] = found


async def _known_ids(store: Store, conn: AsyncConnection, ids: set[int]) -> set[int]:
    """Which of ``ids`` are deliveries (driver SQL: this runs for every receipt)."""
    found: set[int] = set()
    id_list = sorted(ids)
    for i in range(0, len(id_list), 500):
        part = id_list[i : i + 500]
        sql = store.sql(f"SELECT id FROM deliveries WHERE id IN ({', '.join('?' * len(part))})")
        found.update(r[0] for r in await conn.exec_driver_sql(sql, tuple(part)))
    return found


async def _existing(conn: AsyncConnection, ids: set[int]) -> dict[int, Any]:
    found: dict[int, Any] = {}
    id_list = sorted(ids)
    for i in range(0, len(id_list), 900):
        part = id_list[i : i + 900]
        for row in await conn.execute(
            select(
                deliveries.c.id, deliveries.c.alert_id, deliveries.c.contact_id,
                deliveries.c.on_behalf_of, deliveries.c.speaker_id, deliveries.c.state,
                deliveries.c.acked_at,
            ).where(deliveries.c.id.in_(part))
        ):
            found[row.id] = row
    return found


_SQL_RECEIPT = "INSERT INTO receipts (delivery_id, status, detail, at) VALUES (?, ?, ?, ?)"
#: Each move only goes forward: the WHERE lists the states it may come from.
_SQL_MOVE = {
    "sent": "UPDATE deliveries SET state = 'sent' "
            "WHERE id = ? AND state IN ('planned', 'retry', 'sending')",
    "delivered": "UPDATE deliveries SET state = 'delivered', delivered_at = ?, "
                 "lease_until = NULL "
                 "WHERE id = ? AND state IN ('planned', 'retry', 'sending', 'sent', 'failed')",
    # Not reached: the next escalation step is due now, not at the deadline.
    "failed": "UPDATE deliveries SET state = 'failed', last_error = ?, lease_until = NULL, "
              "escalate_at = CASE WHEN escalate_at IS NOT NULL THEN ? ELSE NULL END "
              "WHERE id = ? AND state IN ('planned', 'retry', 'sending', 'sent')",
}


async def _write_receipts(
    store: Store, conn: AsyncConnection, items: Sequence[dict[str, Any]]
) -> None:
    if not items:
        return
    await conn.exec_driver_sql(
        store.sql(_SQL_RECEIPT),
        [(d["delivery_id"], d["status"], d["detail"], d["at"]) for d in items],
    )
    moves: dict[str, list[tuple[Any, ...]]] = {"sent": [], "delivered": [], "failed": []}
    for d in items:
        target = STATUS_STATE.get(d["status"])
        if target == "sent":
            moves["sent"].append((d["delivery_id"],))
        elif target == "delivered":
            moves["delivered"].append((d["at"], d["delivery_id"]))
        elif target == "failed":
            moves["failed"].append((d["detail"] or d["status"], d["at"], d["delivery_id"]))
    for target, rows in moves.items():
        if rows:
            await conn.exec_driver_sql(store.sql(_SQL_MOVE[target]), rows)


async def _write_acks(
    conn: AsyncConnection, items: Sequence[dict[str, Any]], known: dict[int, Any]
) -> None:
    """Record acknowledgements in a few bulk statements, however many arrive at once."""
    seen: set[int] = set()
    firsts: list[tuple[dict[str, Any], Any]] = []
    for d in items:
        row = known[d["delivery_id"]]
        if row.state == "acknowledged" or row.id in seen:
            continue  # repeated callbacks have one effect
        seen.add(row.id)
        firsts.append((d, row))
    if not firsts:
        return
    await conn.execute(insert(acknowledgements), [
        {"delivery_id": row.id, "alert_id": row.alert_id, "contact_id": row.contact_id,
         "speaker_id": row.speaker_id, "via": d["via"], "detail": d["detail"], "at": d["at"]}
        for d, row in firsts])
    await conn.execute(
        update(deliveries).where(deliveries.c.id == bindparam("b_id"))
        # A speaker's escalate_at is its next repeat, which "played" does not end.
        .values(state="acknowledged", acked_at=bindparam("b_at"), lease_until=None,
                escalate_at=case((deliveries.c.role == "speaker", deliveries.c.escalate_at),
                                 else_=None)),
        [{"b_id": row.id, "b_at": d["at"]} for d, row in firsts])
    # The person (or their supervisor, answering for them) has responded: no further
    # escalation on any of their deliveries for this alert. Two statements, each on its own
    # partial index (an OR would scan the alert's every delivery).
    people = {}
    for d, row in firsts:
        person = row.on_behalf_of if row.on_behalf_of is not None else row.contact_id
        if person is not None:
            people[(person, row.alert_id)] = d["at"]
    if not people:
        return
    params = [{"b_person": p, "b_alert": a, "b_at": at} for (p, a), at in people.items()]
    for who in (deliveries.c.contact_id, deliveries.c.on_behalf_of):
        await conn.execute(
            update(deliveries)
            .where(
                _ACK_REQUIRED,
                who == bindparam("b_person"),
                deliveries.c.alert_id == bindparam("b_alert"),
                deliveries.c.acked_at.is_(None),
            )
            .values(acked_at=bindparam("b_at"), escalate_at=None),
            params,
        )


async def _apply_statuses(conn: AsyncConnection, statuses: dict[str, bool]) -> list[str]:
    """Record speaker online/offline; return the speakers reported offline."""
    if not statuses:
        return []
    now = time.time()
    before = dict(
        (await conn.execute(
            select(speakers.c.id, speakers.c.online).where(speakers.c.id.in_(list(statuses)))
        )).all()
    )
    known = [{"b_id": k, "b_online": v} for k, v in statuses.items() if k in before]
    if known:
        await conn.execute(
            update(speakers)
            .where(speakers.c.id == bindparam("b_id"))
            .values(online=bindparam("b_online"), status_at=now),
            known,
        )
    # Every offline report, not only changes: the fallback adds each village's call once.
    return [k for k, v in statuses.items() if k in before and not v]
