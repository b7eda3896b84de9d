"""Field reports (issue 10, item 5): what people in the field report back.

Two ways in: an SMS that is not an acknowledgement ("家里进水了"), which the SMS adapter
hands to the receipt sink (``field_report``) and the receipt writer stores here in bulk;
and a grid worker's report from the follow-up page (text, and counts: trapped, evacuated,
damage). Each is stored with the sender's phone, the contact that phone belongs to, their
role and region, and the warning it most likely concerns: the newest live warning covering
the sender's area (or, for people above a township, the newest one they were sent).

Forwarding is by policy (``field_reports``): a pass claims the reports not forwarded yet
(``forwarded_at``) and plans one delivery per warning and duty officer of the report's
township (kind ``report``) in one ``INSERT ... SELECT``. Like the follow-up message, that
delivery carries a signed link (its acknowledgement token) to a page listing the reports
(``/r/{token}``): the dispatcher renders alert texts only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, func, insert, literal, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.delivery import clean_text, plan_insert
from warngate.phone import mask
from warngate.planning import Targets, resolve_targets
from warngate.policy import Policy
from warngate.store import Store
from warngate.store.schema import (
    LIVE_ALERT_STATES,
    alerts,
    audit_log,
    contacts,
    deliveries,
    field_reports,
)

log = logging.getLogger(__name__)

#: Delivery kind of the message passing reports on to a duty officer.
REPORT_KIND = "report"
TEXT_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class Sender:
    """Who a report comes from, as the registry knows them."""

    contact_id: int | None
    phone: str | None
    role: str | None
    township_code: str | None
    village_code: str | None
    grid_code: str | None


async def _live_targets(conn: AsyncConnection) -> list[tuple[int, Targets]]:
    """Live warnings, newest first, with the regions they cover."""
    rows = (await conn.execute(
        select(alerts.c.id, alerts.c.areas).where(alerts.c.state.in_(LIVE_ALERT_STATES))
        .order_by(alerts.c.id.desc()))).all()
    return [(r.id, await resolve_targets(conn, list(r.areas or ()))) for r in rows]


def _covers(t: Targets, s: Sender) -> bool:
    return bool((s.township_code and s.township_code in t.townships)
                or (s.village_code and s.village_code in t.villages)
                or (s.grid_code and s.grid_code in t.grids))


async def likely_alerts(conn: AsyncConnection, senders: Sequence[Sender]) -> list[int | None]:
    """The warning each sender's report most likely concerns: the newest live warning
    covering their area; for someone with no area below the county (a county duty
    officer), the newest live warning they were sent something of."""
    live = await _live_targets(conn)
    found: list[int | None] = [next((a for a, t in live if _covers(t, s)), None)
                               for s in senders]
    above = sorted({s.contact_id for s, a in zip(senders, found, strict=True)
                    if a is None and s.contact_id is not None and not s.township_code})
    if above and live:
        # Only people who must answer are indexed by person; county staff are among them.
        newest = dict((await conn.execute(
            select(deliveries.c.contact_id, func.max(deliveries.c.alert_id))
            .where(literal_column("ack_required"), deliveries.c.contact_id.in_(above),
                   deliveries.c.alert_id.in_([a for a, _ in live]))
            .group_by(deliveries.c.contact_id))).all())
        found = [a if a is not None or s.contact_id is None else newest.get(s.contact_id)
                 for s, a in zip(senders, found, strict=True)]
    return found


async def senders_by_phone(conn: AsyncConnection, phones: Sequence[str]) -> dict[str, Sender]:
    """The registry's person for each phone (the first if two share one)."""
    out: dict[str, Sender] = {}
    wanted = sorted(set(phones))
    for i in range(0, len(wanted), 500):
        for r in await conn.execute(
            select(contacts.c.id, contacts.c.phone, contacts.c.role, contacts.c.township_code,
                   contacts.c.village_code, contacts.c.grid_code)
            .where(contacts.c.phone.in_(wanted[i : i + 500]), contacts.c.active)
            .order_by(contacts.c.id)
        ):
            out.setdefault(r.phone, Sender(r.id, r.phone, r.role, r.township_code,
                                           r.village_code, r.grid_code))
    return out


async def store_sms_reports(conn: AsyncConnection, items: Sequence[dict[str, Any]]) -> int:
    """Store SMS field reports (``phone``, ``text``, ``at``) in one insert."""
    if not items:
        return 0
    known = await senders_by_phone(conn, [str(d["phone"]) for d in items if d.get("phone")])
    senders = [known.get(str(d.get("phone"))) or Sender(None, d.get("phone"), None, None,
                                                        None, None) for d in items]
    alert_ids = await likely_alerts(conn, senders)
    rows = [
        {"at": d["at"], "alert_id": a, "contact_id": s.contact_id,
         "phone": clean_text(s.phone, 20), "role": s.role, "township_code": s.township_code,
         "village_code": s.village_code, "grid_code": s.grid_code, "source": "sms",
         "text": clean_text(d.get("text") or "", TEXT_LIMIT) or "", "trapped": None,
         "evacuated": None, "damage": None}
        for d, s, a in zip(items, senders, alert_ids, strict=True)
    ]
    await conn.execute(insert(field_reports), rows)
    for r in rows:
        log.info("field report by SMS from %s (%s, township %s): %d characters",
                 mask(r["phone"]), r["role"] or "unknown sender", r["township_code"] or "-",
                 len(r["text"]))
    return len(rows)


async def submit(store: Store, *, contact_id: int, alert_id: int | None, text: str,
                 trapped: int | None, evacuated: int | None, damage: str | None,
                 now: float | None = None) -> int:
    """A grid worker's report from the mobile page; audited under their name."""
    now = time.time() if now is None else now
    async with store.write() as conn:
        c = (await conn.execute(
            select(contacts.c.phone, contacts.c.role, contacts.c.township_code,
                   contacts.c.village_code, contacts.c.grid_code)
            .where(contacts.c.id == contact_id))).one()
        report_id = (await conn.execute(insert(field_reports).values(
            at=now, alert_id=alert_id, contact_id=contact_id, phone=c.phone, role=c.role,
            township_code=c.township_code, village_code=c.village_code,
            grid_code=c.grid_code, source="mobile", text=clean_text(text, TEXT_LIMIT) or "",
            trapped=trapped, evacuated=evacuated, damage=clean_text(damage, TEXT_LIMIT),
        ).returning(field_reports.c.id))).scalar_one()
        await conn.execute(insert(audit_log).values(
            at=now, actor=f"grid_worker:{contact_id}", action="field_report",
            alert_id=alert_id, detail={"report_id": report_id, "trapped": trapped,
                                       "evacuated": evacuated}))
    return int(report_id)


async def forward(store: Store, policy: Policy, *, now: float | None = None) -> int:
    """Pass reports not forwarded yet on to the duty officers the policy names: one
    delivery per warning, duty officer and channel; returns how many were planned.

    Reports that name no live warning or no township stay in the list (a delivery is
    always of a warning)."""
    rule = policy.field_reports
    if not rule.forward_to or not rule.channels:
        return 0
    now = time.time() if now is None else now
    stamp = literal(now, Float())
    r, c = field_reports, contacts
    live = select(alerts.c.id).where(alerts.c.state.in_(LIVE_ALERT_STATES)).scalar_subquery()
    planned = 0
    async with store.write() as conn:
        claimed = await conn.execute(
            update(r).where(r.c.forwarded_at.is_(None), r.c.alert_id.in_(live),
                            r.c.township_code.is_not(None))
            .values(forwarded_at=stamp))
        if max(claimed.rowcount, 0) == 0:
            return 0
        for channel in rule.channels:
            res = await conn.execute(plan_insert(
                {"alert_id": r.c.alert_id, "kind": REPORT_KIND, "contact_id": c.c.id,
                 "role": c.c.role, "channel": channel, "priority": literal(0, Integer()),
                 "due_at": now, "created_at": now, "ack_required": True,
                 "township_code": c.c.township_code, "village_code": c.c.village_code,
                 "grid_code": c.c.grid_code},
                lambda sel: sel.select_from(r.join(c, c.c.township_code == r.c.township_code))
                .where(r.c.forwarded_at == stamp, c.c.role.in_(rule.forward_to), c.c.active,
                       c.c.phone.is_not(None))
                .group_by(r.c.alert_id, c.c.id, c.c.role, c.c.township_code,
                          c.c.village_code, c.c.grid_code)))
            planned += max(res.rowcount, 0)
    if planned:
        log.info("field reports: %d forwarded in %d messages", claimed.rowcount, planned)
    return planned


# -- reading ------------------------------------------------------------------------------

def report_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "at": row.at, "alert_id": row.alert_id,
            "contact_id": row.contact_id, "name": getattr(row, "name", None),
            "phone": row.phone, "role": row.role, "township": row.township_code,
            "village": row.village_code, "grid": row.grid_code, "source": row.source,
            "text": row.text, "trapped": row.trapped, "evacuated": row.evacuated,
            "damage": row.damage, "forwarded_at": row.forwarded_at}


async def report_page(store: Store, *, alert_id: int | None, township: str | None,
                      after: int | None, limit: int) -> list[Any]:
    """Reports newest first; ``after`` is the last id of the previous page."""
    where = []
    if alert_id is not None:
        where.append(field_reports.c.alert_id == alert_id)
    if township is not None:
        where.append(field_reports.c.township_code == township)
    if after is not None:
        where.append(field_reports.c.id < after)
    async with store.board() as conn:
        return list((await conn.execute(
            select(field_reports, contacts.c.name)
            .outerjoin(contacts, contacts.c.id == field_reports.c.contact_id)
            .where(*where).order_by(field_reports.c.id.desc()).limit(limit))).all())


@dataclass(frozen=True, slots=True)
class ForwardedReports:
    """What a duty officer's link shows: the reports of their township for a warning."""

    delivery_id: int
    alert_id: int
    township_code: str | None
    headline: str
    reports: tuple[Any, ...]


async def find_forwarded(store: Store, delivery_id: int) -> ForwardedReports | None:
    async with store.read() as conn:
        row = (await conn.execute(
            select(deliveries.c.id, deliveries.c.alert_id, deliveries.c.township_code,
                   alerts.c.headline)
            .join(alerts, alerts.c.id == deliveries.c.alert_id)
            .where(deliveries.c.id == delivery_id, deliveries.c.kind == REPORT_KIND)
        )).one_or_none()
    if row is None:
        return None
    reports = await report_page(store, alert_id=row.alert_id, township=row.township_code,
                                after=None, limit=200)
    return ForwardedReports(row.id, row.alert_id, row.township_code, row.headline,
                            tuple(reports))
