"""叫应: whoever must acknowledge and has not, by the policy's deadline, gets the next step.

A delivery that needs an acknowledgement carries ``escalate_at``: when its next policy step
is due. The sweep (an APScheduler job, safe in every process because each fired row is
claimed by clearing its ``escalate_at`` in the same transaction that adds the next step)
only ever adds deliveries. A failed delivery (unreachable number, unanswered call) has its
``escalate_at`` pulled forward to the moment it failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, insert, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.planning import priority_of
from warngate.policy import Policy
from warngate.store import Store
from warngate.store.schema import alerts, contacts, deliveries, speakers

log = logging.getLogger(__name__)

_LIVE = ("dispatching", "active")


async def escalate_due(store: Store, policy: Policy, *, limit: int = 2000) -> int:
    """Take the next step for every un-acknowledged delivery past its time; return how many."""
    now = time.time()
    async with store.write() as conn:
        due = await _claim_due(
            conn, store, now, limit,
            (deliveries.c.contact_id, deliveries.c.on_behalf_of, deliveries.c.role,
             deliveries.c.grid_code),
            deliveries.c.acked_at.is_(None), deliveries.c.role != "speaker",
        )
        new_rows: list[dict[str, Any]] = []
        for d in due:
            if d.alert_state in _LIVE:
                row = await _next_step(conn, policy, d, now)
                if row is not None:
                    new_rows.append(row)
        if new_rows:
            await conn.execute(insert(deliveries), new_rows)
    if new_rows:
        log.info("escalated %d un-acknowledged deliveries", len(new_rows))
    return len(new_rows)


async def repeat_speakers(store: Store, policy: Policy, *, limit: int = 2000) -> int:
    """Sound live warnings again on their speakers at the policy's ``repeat_every``.

    A speaker delivery's ``escalate_at`` is its next repeat; the repeat is a new delivery
    (the next step) carrying the one after. A cancelled, superseded or expired alert stops
    repeating; its cancel sends ``stop``.
    """
    now = time.time()
    async with store.write() as conn:
        due = await _claim_due(
            conn, store, now, limit,
            (deliveries.c.speaker_id, deliveries.c.priority, deliveries.c.created_at,
             alerts.c.expires),
            deliveries.c.role == "speaker",
        )
        new_rows: list[dict[str, Any]] = []
        later: list[tuple[int, float]] = []
        for d in due:
            every = policy.levels[d.level].speakers.repeat_every
            if d.alert_state not in _LIVE or not every or (d.expires and d.expires <= now):
                continue
            if now < d.created_at + every:
                # A failed play pulls escalate_at forward; repeat on schedule, not in a loop.
                later.append((d.id, d.created_at + every))
                continue
            new_rows.append({
                "alert_id": d.alert_id, "kind": "alert", "speaker_id": d.speaker_id,
                "role": "speaker", "channel": "speaker", "step": d.step + 1,
                "state": "planned", "priority": d.priority, "village_rank": 0,
                "due_at": now, "ack_required": False, "escalate_at": now + every,
                "township_code": d.township_code, "village_code": d.village_code,
                "created_at": now,
            })
        for delivery_id, at in later:
            await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id)
                               .values(escalate_at=at))
        if new_rows:
            await conn.execute(insert(deliveries), new_rows)
    return len(new_rows)


async def _claim_due(
    conn: AsyncConnection, store: Store, now: float, limit: int,
    columns: Sequence[ColumnElement[Any]], *conditions: ColumnElement[bool],
) -> Sequence[Any]:
    """Deliveries whose ``escalate_at`` has passed, oldest first, with their alert's level
    and state; their ``escalate_at`` is cleared so each is taken once (and on PostgreSQL
    another gateway's sweep skips the rows this one holds)."""
    q = (
        select(deliveries.c.id, deliveries.c.alert_id, deliveries.c.step,
               deliveries.c.township_code, deliveries.c.village_code, *columns,
               alerts.c.level, alerts.c.state.label("alert_state"))
        .join(alerts, alerts.c.id == deliveries.c.alert_id)
        .where(deliveries.c.escalate_at <= now, *conditions)
        .order_by(deliveries.c.escalate_at)
        .limit(limit)
    )
    if store.is_postgres:
        q = q.with_for_update(of=deliveries, skip_locked=True)
    due = (await conn.execute(q)).all()
    if due:
        await conn.execute(update(deliveries).where(deliveries.c.id.in_([d.id for d in due]))
                           .values(escalate_at=None))
    return due


async def _next_step(
    conn: AsyncConnection, policy: Policy, d: Any, now: float
) -> dict[str, Any] | None:
    person = d.on_behalf_of if d.on_behalf_of is not None else d.contact_id
    person_role = d.role
    if d.on_behalf_of is not None:
        person_role = (
            await conn.execute(select(contacts.c.role).where(contacts.c.id == person))
        ).scalar_one_or_none() or d.role
    rp = policy.levels[d.level].roles.get(person_role)
    if rp is None or d.step >= len(rp.escalation):
        return None
    step = rp.escalation[d.step]
    following = rp.escalation[d.step + 1] if d.step + 1 < len(rp.escalation) else None
    recipient, on_behalf_of, role = person, None, person_role
    if step.to == "supervisor":
        supervisor = (
            await conn.execute(select(contacts.c.supervisor_id, contacts.c.id)
                               .where(contacts.c.id == person))
        ).first()
        if supervisor is None or supervisor.supervisor_id is None:
            log.warning("contact %s did not answer and has no supervisor to call", person)
            return None
        recipient, on_behalf_of = supervisor.supervisor_id, person
        role = (
            await conn.execute(select(contacts.c.role).where(contacts.c.id == recipient))
        ).scalar_one()
    return {
        "alert_id": d.alert_id, "kind": "alert", "contact_id": recipient,
        "on_behalf_of": on_behalf_of, "role": role, "channel": step.channel,
        "step": d.step + 1, "state": "planned", "priority": priority_of(d.level, role) - 1,
        "village_rank": 0, "due_at": now, "ack_required": True,
        "escalate_at": now + (following.after - step.after) if following else None,
        "township_code": d.township_code, "village_code": d.village_code,
        "grid_code": d.grid_code, "created_at": now,
    }


async def speaker_fallback(store: Store, policy: Policy, speaker_id: str) -> int:
    """An offline speaker's village gets its fallback now (e.g. call the village head)."""
    now = time.time()
    async with store.write() as conn:
        q = select(speakers).where(speakers.c.id == speaker_id)
        if store.is_postgres:
            # The status listener and every gateway's sweep may ask at once: holding the
            # speaker's row makes the next one see these rows and add nothing.
            q = q.with_for_update()
        sp = (await conn.execute(q)).one_or_none()
        if sp is None:
            return 0
        open_alerts = (
            await conn.execute(
                select(deliveries.c.alert_id, alerts.c.level)
                .join(alerts, alerts.c.id == deliveries.c.alert_id)
                .where(
                    deliveries.c.speaker_id == speaker_id,
                    deliveries.c.kind != "cancel",
                    alerts.c.state.in_(_LIVE),
                    # A speaker that reported "failed" (amplifier fault) counts too.
                    deliveries.c.state.in_(("planned", "retry", "sending", "sent", "failed")),
                )
                .distinct()
            )
        ).all()
        rows: list[dict[str, Any]] = []
        for alert_id, level in open_alerts:
            fb = policy.levels[level].speakers
            if not fb.fallback_role:
                continue
            already = select(deliveries.c.contact_id).where(
                deliveries.c.alert_id == alert_id,
                deliveries.c.channel == fb.fallback_channel,
                deliveries.c.role == fb.fallback_role,
                deliveries.c.step == 0,
                deliveries.c.last_error == literal_column("'speaker offline fallback'"),
            )
            people = (
                await conn.execute(
                    select(contacts.c.id, contacts.c.township_code, contacts.c.village_code,
                           contacts.c.grid_code)
                    .where(contacts.c.role == fb.fallback_role,
                           contacts.c.village_code == sp.village_code,
                           contacts.c.id.not_in(already))
                )
            ).all()
            for p in people:
                rows.append({
                    "alert_id": alert_id, "kind": "alert", "contact_id": p.id,
                    "role": fb.fallback_role, "channel": fb.fallback_channel, "step": 0,
                    "state": "planned", "priority": priority_of(level, fb.fallback_role) - 1,
                    "village_rank": 0, "due_at": now, "ack_required": True,
                    "township_code": p.township_code, "village_code": p.village_code,
                    "grid_code": p.grid_code, "created_at": now,
                    # Marks why this row exists, so a flapping speaker adds it once.
                    "last_error": "speaker offline fallback",
                })
        if rows:
            await conn.execute(insert(deliveries), rows)
    if rows:
        log.warning("speaker %s offline: %d fallback deliveries", speaker_id, len(rows))
    return len(rows)


async def speakers_needing_fallback(store: Store) -> list[str]:
    """Speakers of live alerts that are known offline or failed to play.

    Catches what a status change alone would miss: a speaker already offline when the
    warning was planned, and one that answered "failed". ``speaker_fallback`` adds each
    village's fallback once, so asking again is harmless.
    """
    async with store.read() as conn:
        q = (
            select(deliveries.c.speaker_id).distinct()
            .join(alerts, alerts.c.id == deliveries.c.alert_id)
            .join(speakers, speakers.c.id == deliveries.c.speaker_id)
            .where(
                deliveries.c.speaker_id.is_not(None),
                deliveries.c.kind != "cancel",
                alerts.c.state.in_(_LIVE),
                or_(
                    deliveries.c.state == "failed",
                    and_(speakers.c.online.is_(False),
                         deliveries.c.state.in_(("planned", "retry", "sending", "sent"))),
                ),
            )
        )
        return [r for r in (await conn.execute(q)).scalars() if r is not None]


async def expire_due(store: Store) -> int:
    """Alerts past ``expires`` stop: pending deliveries expire, escalation ends."""
    now = time.time()
    async with store.write() as conn:
        ids = list(
            (await conn.execute(
                select(alerts.c.id).where(alerts.c.state.in_(_LIVE),
                                          alerts.c.expires.is_not(None),
                                          alerts.c.expires <= now)
            )).scalars()
        )
        if not ids:
            return 0
        await conn.execute(
            update(alerts).where(alerts.c.id.in_(ids)).values(state="expired", updated_at=now)
        )
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.alert_id.in_(ids),
                   or_(deliveries.c.state.in_(("planned", "retry")),
                       and_(deliveries.c.escalate_at.is_not(None))))
            .values(
                state=literal_column(
                    "CASE WHEN state IN ('planned', 'retry') THEN 'expired' ELSE state END"
                ),
                escalate_at=None,
            )
        )
    return len(ids)
