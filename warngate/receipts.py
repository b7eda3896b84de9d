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
    Float,
    String,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.adapter import ProviderEvent
from warngate.delivery import (
    ANSWERABLE,
    WARNING_KINDS,
    Batch,
    DeliveryState,
    Event,
    clean_text,
    escalate_now_if_waiting,
    in_states,
    move,
    p_float,
    p_id,
    p_str,
    p_text,
)
from warngate.phone import mask
from warngate.store import Store
from warngate.store.schema import (
    LIVE_ALERT_STATES,
    acknowledgements,
    alerts,
    audit_log,
    contacts,
    deliveries,
    provider_events,
    rejected_inputs,
    speakers,
)
from warngate.store.schema import receipts as receipts_table
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
#: ``deliveries.acked_how``: the person answered themselves, or someone answered for them.
SELF, COVERED = "self", "covered"
# Literal, so SQLite can use the partial index on people who must answer.
_ACK_REQUIRED: ColumnElement[bool] = literal_column("ack_required")


@dataclass
class _Pending:
    kind: str  # receipt | ack | report
    data: dict[str, Any]
    event: ProviderEvent | None = None
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
        event: ProviderEvent | None = None,
    ) -> None:
        self._pending.append(_Pending("receipt", {
            "delivery_id": delivery_id, "provider_ref": clean_text(provider_ref, 64),
            "status": clean_text(status.lower(), 24), "detail": clean_text(detail),
            "at": time.time()}, event))
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
        event: ProviderEvent | None = None,
    ) -> None:
        """The recipient of a delivery answered it (a reply, a key press, the link)."""
        self._pending.append(_Pending("ack", {
            "delivery_id": delivery_id, "provider_ref": clean_text(provider_ref, 64),
            "phone": clean_text(phone, 32), "via": clean_text(via, 16),
            "detail": clean_text(detail), "at": time.time()}, event))
        self._kick.set()

    def speaker_status(self, speaker_id: str, *, online: bool) -> None:
        self._statuses[speaker_id] = online
        self._kick.set()

    def field_report(
        self,
        *,
        phone: str,
        text: str,
        via: str,
        event: ProviderEvent | None = None,
    ) -> None:
        """A text that is not an acknowledgement: stored as a field report
        (``warngate.fieldreports``), written with the next batch."""
        self._pending.append(_Pending("report", {
            "phone": clean_text(phone, 32), "text": clean_text(text), "via": clean_text(via, 16),
            "at": time.time()}, event))
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
        """Write everything buffered so far (tests call this directly).

        A batch the store refuses is split: each item is written alone, and one the store
        refuses on its own (text it cannot hold, a bug of ours) is kept in
        ``rejected_inputs`` with the error, so it can never hold back everyone else's
        receipts. A store that is down keeps everything buffered.
        """
        if not self._pending and not self._statuses:
            return
        batch, self._pending = self._pending, []
        statuses, self._statuses = self._statuses, {}
        try:
            retry, offline = await self._write(batch, statuses)
        except asyncio.CancelledError:
            # Stopped mid-write: the transaction rolled back, so the batch goes back for
            # the last flush at shutdown.
            self._pending[:0] = batch
            for k, v in statuses.items():
                self._statuses.setdefault(k, v)
            raise
        except Exception as exc:
            if _store_unavailable(exc) or (len(batch) <= 1 and not statuses):
                log.exception("could not record %d receipts; retrying", len(batch))
                self._pending[:0] = batch
                for k, v in statuses.items():
                    self._statuses.setdefault(k, v)
                await asyncio.sleep(0.5)
                return
            retry, offline = await self._write_one_by_one(batch, statuses)
        self._pending[:0] = retry
        for speaker_id in offline:
            self.on_speaker_offline(speaker_id)
        if batch or statuses:
            self.on_change()

    async def _write(self, batch: Sequence[_Pending], statuses: dict[str, bool]
                     ) -> tuple[list[_Pending], list[str]]:
        async with self.store.write() as conn:
            retry = await self._apply(conn, [p for p in batch if p.kind != "report"])
            await _write_field_reports(conn, [p for p in batch if p.kind == "report"])
            offline = await _apply_statuses(conn, statuses)
        return retry, offline

    async def _write_one_by_one(self, batch: Sequence[_Pending], statuses: dict[str, bool]
                                ) -> tuple[list[_Pending], list[str]]:
        retry: list[_Pending] = []
        offline: list[str] = []
        parts: list[tuple[list[_Pending], dict[str, bool]]] = [([p], {}) for p in batch]
        parts += [([], {k: v}) for k, v in statuses.items()]
        for items, status in parts:
            try:
                r, o = await self._write(items, status)
            except Exception as exc:
                if _store_unavailable(exc):
                    self._pending.extend(items)
                    for k, v in status.items():
                        self._statuses.setdefault(k, v)
                    continue
                log.error("a receipt the store refuses is kept as rejected input: %s", exc)
                if items:
                    await self._keep_poison(items[0], exc)
                continue
            retry += r
            offline += o
        return retry, offline

    async def _keep_poison(self, p: _Pending, exc: Exception) -> None:
        row = _rejection(p, reason=f"the store refused it: {type(exc).__name__}: {exc}"[:2000])
        try:
            async with self.store.write() as conn:
                await conn.execute(insert(rejected_inputs), [row])
        except Exception:
            log.exception("could not keep a refused receipt either; dropped: %s", row["body"])

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
        valid = {p.data["delivery_id"] for p in ok if 0 < p.data["delivery_id"] < 2**63}
        # Receipts only need to know the row exists; acknowledgements need the row and its
        # alert's state (the full read for every receipt halved the writer's throughput).
        known: dict[int, Any] = dict.fromkeys(await _known_ids(conn, valid))
        acked = {p.data["delivery_id"] for p in ok if p.kind == "ack"}
        known.update(await _existing(conn, acked & known.keys()))
        for p in ok:
            if p.data["delivery_id"] not in known:
                rejected.append(_rejection(p))
        ok = [p for p in ok if p.data["delivery_id"] in known]
        # Only now that each is known to apply: a receipt waiting for its provider reference
        # must not have its event taken, or its retry would count as a replay.
        ok = await _first_time(conn, ok)
        await _write_receipts(conn, [p.data for p in ok if p.kind == "receipt"])
        acks = [p for p in ok if p.kind == "ack"]
        stale = [p for p in acks if known[p.data["delivery_id"]].alert_state not in _LIVE_ALERT]
        for p in stale:
            rejected.append(_rejection(p, reason="acknowledgement of a warning that is "
                                       f"{known[p.data['delivery_id']].alert_state}"))
        await _write_acks(conn, [p.data for p in acks if p not in stale], known)
        if rejected:
            self.unknown += len(rejected)
            await conn.execute(insert(rejected_inputs), rejected)
        return retry


_LIVE_ALERT = frozenset(LIVE_ALERT_STATES)


async def _write_field_reports(conn: AsyncConnection, reports: Sequence[_Pending]) -> None:
    """Field reports (issue 10, item 5), each once however often its provider sends it."""
    if reports:
        from warngate.fieldreports import store_sms_reports

        await store_sms_reports(conn, [p.data for p in await _first_time(conn, reports)])


def _store_unavailable(exc: BaseException) -> bool:
    """The store could not be reached (rather than refusing what we wrote)."""
    if isinstance(exc, (OSError, TimeoutError, OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _rejection(p: _Pending, *, reason: str | None = None) -> dict[str, Any]:
    data = dict(p.data)
    if data.get("phone"):
        data["phone"] = mask(data["phone"])
    if p.event is not None:
        data["event"] = f"{p.event.source}:{p.event.key}"
    what = "acknowledgement" if p.kind == "ack" else "receipt"
    return {
        "at": time.time(),
        "entry_point": f"{what} from adapter",
        "source": clean_text(data.get("via") or data.get("status"), 200),
        "reason": reason or f"{what} names no delivery we know",
        "content_type": "application/json",
        "body": json.dumps(data, ensure_ascii=False, default=str)
        .encode("utf-8", "backslashreplace"),
    }


async def _first_time(conn: AsyncConnection, batch: Sequence[_Pending]) -> list[_Pending]:
    """Drop the items whose provider event was taken in before (now or by an earlier run);
    remember the others' events in the same transaction as their effect."""
    fresh: list[_Pending] = []
    keyed: dict[tuple[str, str], _Pending] = {}
    for p in batch:
        if p.event is None:
            fresh.append(p)
        else:
            keyed.setdefault((p.event.source, clean_text(p.event.key, 255) or ""), p)
    if not keyed:
        return fresh
    now = time.time()
    rows = [{"source": s, "event_key": k, "at": now} for s, k in sorted(keyed)]
    taken: set[tuple[str, str]] = set()
    for i in range(0, len(rows), 500):
        stmt = (conflict_insert(conn)(provider_events).on_conflict_do_nothing()
                .values(rows[i : i + 500])
                .returning(provider_events.c.source, provider_events.c.event_key))
        taken.update((r.source, r.event_key) for r in await conn.execute(stmt))
    fresh += [p for k, p in keyed.items() if k in taken]
    return fresh


def conflict_insert(conn: AsyncConnection) -> Any:
    """The dialect's INSERT that knows ON CONFLICT."""
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


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
    """A reply from a number acknowledges that person's newest open delivery of a live
    warning (never a lifted one's)."""
    waiting = [p for p in acks if p.data.get("delivery_id") is None and p.data.get("phone")]
    phones = sorted({str(p.data["phone"]) for p in waiting})
    newest: dict[str, int] = {}
    for i in range(0, len(phones), 500):
        rows = await conn.execute(
            select(contacts.c.phone, func.max(deliveries.c.id))
            .join(contacts, contacts.c.id == deliveries.c.contact_id)
            .join(alerts, alerts.c.id == deliveries.c.alert_id)
            .where(
                contacts.c.phone.in_(phones[i : i + 500]),
                _ACK_REQUIRED,
                # A reply answers the warning, not a follow-up list or an alarm about it.
                deliveries.c.kind.in_(WARNING_KINDS),
                # Covered by someone else: their own answer is still wanted and counted.
                or_(deliveries.c.acked_at.is_(None), deliveries.c.acked_how == COVERED),
                or_(in_states(ANSWERABLE), deliveries.c.acked_how == COVERED),
                alerts.c.state.in_(sorted(_LIVE_ALERT)),
            )
            .group_by(contacts.c.phone)
        )
        newest.update((phone, int(delivery_id)) for phone, delivery_id in rows)
    for p in waiting:
        if (found := newest.get(str(p.data["phone"]))) is not None:
            p.data["delivery_id"] = found


async def _known_ids(conn: AsyncConnection, ids: set[int]) -> set[int]:
    """Which of ``ids`` are deliveries."""
    found: set[int] = set()
    id_list = sorted(ids)
    for i in range(0, len(id_list), 900):
        found.update((await conn.execute(
            select(deliveries.c.id).where(deliveries.c.id.in_(id_list[i : i + 900])))).scalars())
    return found


async def _existing(conn: AsyncConnection, ids: set[int]) -> dict[int, Any]:
    """The deliveries among ``ids``, with their alert's state (``alert_state``)."""
    found: dict[int, Any] = {}
    id_list = sorted(ids)
    for i in range(0, len(id_list), 900):
        part = id_list[i : i + 900]
        # By primary key alone, then the few alerts apart: joined in one statement,
        # PostgreSQL scanned every delivery to hash-join them (seconds per batch).
        for row in await conn.execute(
            select(
                deliveries.c.id, deliveries.c.alert_id, deliveries.c.contact_id,
                deliveries.c.on_behalf_of, deliveries.c.speaker_id, deliveries.c.state,
                deliveries.c.acked_at, deliveries.c.acked_how,
            ).where(deliveries.c.id.in_(part))
        ):
            found[row.id] = row
    alert_ids = sorted({row.alert_id for row in found.values()})
    states = dict((await conn.execute(
        select(alerts.c.id, alerts.c.state).where(alerts.c.id.in_(alert_ids)))).all()
    ) if alert_ids else {}
    return {i: _Known(row, states.get(row.alert_id)) for i, row in found.items()}


class _Known:
    """A delivery row and its alert's state."""

    __slots__ = ("acked_how", "alert_id", "alert_state", "contact_id", "id", "on_behalf_of",
                 "speaker_id", "state")

    def __init__(self, row: Any, alert_state: str | None) -> None:
        self.id, self.alert_id, self.contact_id = row.id, row.alert_id, row.contact_id
        self.on_behalf_of, self.speaker_id, self.state = (
            row.on_behalf_of, row.speaker_id, row.state)
        self.acked_how = row.acked_how
        self.alert_state = alert_state

    @property
    def person(self) -> int | None:
        """Whose 叫应 this row is for: its recipient's, or the silent person's a supervisor
        was called about."""
        person: int | None = (self.on_behalf_of if self.on_behalf_of is not None
                              else self.contact_id)
        return person


_BY_ID = deliveries.c.id == p_id()
_ALERT_LIVE = deliveries.c.alert_id.in_(
    select(alerts.c.id).where(alerts.c.state.in_(
        [literal_column(f"'{s}'") for s in sorted(_LIVE_ALERT)])).scalar_subquery())
#: Provider word's delivery state → the move it makes.
_RECEIPT_MOVES = {k: Batch(v) for k, v in {
    "sent": move(Event.RECEIPT_SENT, _BY_ID),
    "delivered": move(Event.RECEIPT_DELIVERED, _BY_ID, delivered_at=p_float("b_at"),
                      lease_until=None),
    # Not reached: the next escalation step is due now, not at the deadline.
    "failed": move(Event.RECEIPT_FAILED, _BY_ID, last_error=p_text("b_error"),
                   lease_until=None, escalate_at=escalate_now_if_waiting("b_at")),
}.items()}


_RECEIPT_INSERT = Batch(insert(receipts_table).values(
    delivery_id=p_id("delivery_id"), status=p_str("status"), detail=p_text("detail"),
    at=p_float("at")))
# A speaker's escalate_at is its next repeat, which "played" does not end. The alert's state
# is read again by the statement itself: a cancel that committed after this batch was read
# still wins (no lock held on the alert, which planning and accepting alerts would wait for).
_ACK_MOVE = Batch(move(
    Event.ACK, _BY_ID, _ALERT_LIVE, acked_at=p_float("b_at"), acked_how=p_str("b_how"),
    lease_until=None,
    escalate_at=case((deliveries.c.role == "speaker", deliveries.c.escalate_at),
                     else_=literal(None, Float()))))
#: The person's every row for the alert: settled now, or, when they answer themselves after
#: someone covered for them, counted as answered by themselves (the first time stays).
_PERSON_SETTLED = {
    who.name: Batch(
        update(deliveries)
        .where(_ACK_REQUIRED, who == p_id("b_person"), deliveries.c.alert_id == p_id("b_alert"),
               # A supervisor's own answer does not answer the calls about their people.
               *([deliveries.c.on_behalf_of.is_(None)] if who is deliveries.c.contact_id
                 else []),
               or_(deliveries.c.acked_at.is_(None),
                   and_(p_str("b_how") == literal(SELF, String()),
                        deliveries.c.acked_how.is_distinct_from(literal(SELF, String())))))
        .values(acked_at=func.coalesce(deliveries.c.acked_at, p_float("b_at")),
                acked_how=p_str("b_how"), escalate_at=None))
    for who in (deliveries.c.contact_id, deliveries.c.on_behalf_of)}


async def _write_receipts(conn: AsyncConnection, items: Sequence[dict[str, Any]]) -> None:
    if not items:
        return
    items = sorted(items, key=lambda d: d["delivery_id"])
    await _RECEIPT_INSERT.run(conn, items)
    moves: dict[str, list[dict[str, Any]]] = {}
    for d in items:
        target = STATUS_STATE.get(d["status"])
        if target is not None:
            moves.setdefault(target, []).append({
                "b_id": d["delivery_id"], "b_at": d["at"],
                "b_error": d["detail"] or d["status"]})
    for target, params in moves.items():
        await _RECEIPT_MOVES[target].run(conn, params)


async def _write_acks(
    conn: AsyncConnection, items: Sequence[dict[str, Any]], known: dict[int, Any]
) -> None:
    """Record acknowledgements in a few bulk statements, however many arrive at once.

    Each says whose 叫应 it settles (the row's person) and who answered: the person
    themselves, a supervisor called about them (the row is ``on_behalf_of`` them), or staff
    or a grid worker recording it (``by`` in the item). Only the person's own answer makes
    them "answered"; any other makes them "covered", which their own answer later upgrades.
    """
    seen: set[int] = set()
    firsts: list[tuple[dict[str, Any], Any, str]] = []
    for d in sorted(items, key=lambda d: d["delivery_id"]):
        row = known[d["delivery_id"]]
        by = d.get("by") or (SELF if row.on_behalf_of is None else "supervisor")
        how = SELF if by == SELF else COVERED
        upgrade = how == SELF and row.acked_how == COVERED
        if (row.state == DeliveryState.ACKNOWLEDGED and not upgrade) or row.id in seen:
            continue  # repeated callbacks have one effect
        seen.add(row.id)
        firsts.append((d, row, by))
    if not firsts:
        return
    await conn.execute(insert(acknowledgements), [
        {"delivery_id": row.id, "alert_id": row.alert_id, "contact_id": row.contact_id,
         "speaker_id": row.speaker_id, "via": d["via"], "detail": d["detail"], "at": d["at"],
         "person_id": row.person, "answered_by": by, "actor": d.get("actor"),
         "note": d.get("note")}
        for d, row, by in firsts])
    await _ACK_MOVE.run(conn, [
        {"b_id": row.id, "b_at": d["at"], "b_how": SELF if by == SELF else COVERED}
        for d, row, by in firsts])
    # The person has answered, or been answered for: no further escalation on any of their
    # deliveries for this alert. Two statements, each on its own partial index (an OR would
    # scan the alert's every delivery). A person's own answer wins over a cover.
    people: dict[tuple[int, int], tuple[float, str]] = {}
    for d, row, by in firsts:
        if row.person is None:
            continue
        how = SELF if by == SELF else COVERED
        key = (row.person, row.alert_id)
        if key not in people or (how == SELF and people[key][1] != SELF):
            people[key] = (d["at"], how)
    if not people:
        return
    params = [{"b_person": p, "b_alert": a, "b_at": at, "b_how": how}
              for (p, a), (at, how) in sorted(people.items())]
    for statement in _PERSON_SETTLED.values():
        await statement.run(conn, params)


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


#: Who may answer for a person, besides the person: ``acknowledgements.answered_by``.
COVER_BY = ("supervisor", "staff", "grid_worker")


class CoverError(LookupError):
    """The acknowledgement cannot be recorded; the message says why (in Chinese)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def record_for(
    store: Store, alert_id: int, person_id: int, *, by: str, via: str, actor: str,
    note: str | None = None, township: str | None = None, at: float | None = None,
) -> dict[str, Any]:
    """Someone else answers for ``person_id`` (a supervisor who reached them, staff recording
    a call or a visit, their grid worker in person): the person counts as covered, never as
    having answered themselves, and escalation about them stops. Audited with ``actor``.

    ``township``: the recorder acts for that township only.
    """
    if by not in COVER_BY:
        raise CoverError("bad_by", f"by 须为 {'/'.join(COVER_BY)} 之一")
    at = time.time() if at is None else at
    async with store.write() as conn:
        row = (await conn.execute(
            select(deliveries.c.id, deliveries.c.township_code)
            .where(_ACK_REQUIRED, deliveries.c.contact_id == person_id,
                   deliveries.c.alert_id == alert_id, deliveries.c.on_behalf_of.is_(None),
                   deliveries.c.kind.in_(WARNING_KINDS))
            .order_by(deliveries.c.id.desc()).limit(1))).one_or_none()
        if row is None:
            raise CoverError("not_found", "此人不是本预警须叫应的责任人")
        if township and row.township_code != township:
            raise CoverError("outside_township", f"此人不属于乡镇 {township}")
        known = await _existing(conn, {row.id})
        if known[row.id].alert_state not in _LIVE_ALERT:
            raise CoverError("alert_not_live",
                             f"预警已{known[row.id].alert_state}，不再记录叫应")
        already = known[row.id].acked_how
        await _write_acks(conn, [{"delivery_id": row.id, "via": clean_text(via, 16),
                                  "detail": None, "at": at, "by": by, "actor": actor,
                                  "note": clean_text(note)}], known)
        await conn.execute(insert(audit_log).values(
            at=at, actor=actor, action="ack_for", alert_id=alert_id,
            detail={"person_id": person_id, "by": by, "via": via, "note": note}))
    return {"alert_id": alert_id, "person_id": person_id, "by": by, "via": via,
            "status": "already_answered" if already == SELF else "covered"}
