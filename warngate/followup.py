"""Households a bound grid worker must reach in person (issue 10, item 4).

A household goes on its grid worker's follow-up list for a warning when every message of
that warning to it failed, when it has no phone at all, or when it is flagged vulnerable
(elderly living alone, disabled, bed-ridden: ``contacts.vulnerable_reason``). Only
warnings of the levels the policy names (``followup.levels``: those that reach households)
make lists.

A pass is set-based, like planning and escalation: per live warning one
``INSERT INTO followups ... SELECT ... ON CONFLICT DO NOTHING`` lists every household that
qualifies (50,000 failed households are one statement), so a household is listed at most
once per warning however often the pass runs or however many gateways run it. Then every
grid worker with newly listed households gets one message: the rows are claimed
(``notified_at``) and one delivery per warning and grid worker is planned from them
through ``warngate.delivery.plan_insert`` (kind ``followup``).

The message carries the link of the follow-up page, ``/f/{token}``. The token is the
delivery's own acknowledgement token (``warngate.acktoken``): the follow-up delivery names
the grid worker and the warning, so nothing else needs signing. The dispatcher renders
alert texts only, so follow-up deliveries require an acknowledgement (that is what makes
the lane attach a signed link) and the SMS adapters write the follow-up wording and turn
the link into the page's (``warngate.adapter.page_url``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Float,
    Integer,
    String,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.delivery import plan_insert
from warngate.planning import Targets, priority_of, resolve_targets
from warngate.policy import Policy
from warngate.store import Store
from warngate.store.schema import (
    LIVE_ALERT_STATES,
    alerts,
    audit_log,
    contacts,
    deliveries,
    followups,
)

log = logging.getLogger(__name__)

#: Delivery kind of the message that sends a grid worker their list (deliveries.kind is 8).
FOLLOWUP_KIND = "followup"

REASON_ZH = {"failed": "短信未送达", "no_phone": "无手机", "vulnerable": "重点关注"}
#: What a grid worker records per household, as the page names it.
OUTCOME_ZH = {
    "informed": "已当面告知",
    "evacuated": "已转移（转移到位）",
    "refused": "拒绝转移",
    "not_found": "未找到",
}

_ID = followups.c.id.type


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did: households newly listed, grid workers sent their list."""

    listed: int = 0
    notified: int = 0


def _insert(conn: AsyncConnection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def _failed_households(alert_id: int) -> Any:
    """Households every one of whose messages of ``alert_id`` failed (a subquery).

    Grouped over the alert's deliveries (its index by alert): households are kept out of
    the per-person index, so a correlated lookup per household would scan deliveries.
    """
    d = deliveries
    return (
        select(d.c.contact_id.label("hid"))
        .where(d.c.alert_id == literal(alert_id, _ID), d.c.role == "household",
               d.c.kind != "cancel", d.c.contact_id.is_not(None))
        .group_by(d.c.contact_id)
        .having(func.sum(case((d.c.state == "failed", 0), else_=1)) == 0)
        .subquery("failed_hh")
    )


def list_statement(conn: AsyncConnection, alert_id: int, targets: Targets, now: float) -> Any:
    """``INSERT INTO followups ... SELECT``: every household of ``alert_id`` to follow up."""
    h = contacts
    failed = _failed_households(alert_id)
    reason = case((h.c.phone.is_(None), literal("no_phone", String())),
                  (failed.c.hid.is_not(None), literal("failed", String())),
                  else_=literal("vulnerable", String()))
    rows = (
        select(
            literal(alert_id, _ID).label("alert_id"), h.c.id.label("household_id"),
            h.c.responsible_id.label("grid_worker_id"), reason.label("reason"),
            h.c.township_code, h.c.village_code, h.c.grid_code,
            literal(now, Float()).label("created_at"),
        )
        .select_from(h.outerjoin(failed, failed.c.hid == h.c.id))
        .where(
            h.c.role == "household", h.c.active,
            or_(failed.c.hid.is_not(None),
                and_(targets.covers(h), or_(h.c.phone.is_(None), h.c.vulnerable))),
            # Cheap on a repeated pass (the unique index); ON CONFLICT settles races.
            ~exists().where(followups.c.alert_id == literal(alert_id, _ID),
                            followups.c.household_id == h.c.id),
        )
    )
    names = [c.name for c in rows.selected_columns]
    return (_insert(conn)(followups).from_select(names, rows)
            .on_conflict_do_nothing(index_elements=["alert_id", "household_id"]))


async def _eligible_alerts(conn: AsyncConnection, policy: Policy) -> list[Any]:
    levels = [lv for lv in policy.followup.levels]
    if not levels:
        return []
    return list((await conn.execute(
        select(alerts.c.id, alerts.c.level, alerts.c.areas, alerts.c.status,
               alerts.c.community_drill)
        .where(alerts.c.state.in_(LIVE_ALERT_STATES), alerts.c.level.in_(levels),
               # Drills involve households only when marked community-wide.
               or_(alerts.c.status == "Actual", alerts.c.community_drill))
        .order_by(alerts.c.id)
    )).all())


async def follow_up(store: Store, policy: Policy, *, now: float | None = None) -> PassResult:
    """List the households to follow up for every live warning, and send each grid worker
    with newly listed households one message; safe to run in every gateway."""
    now = time.time() if now is None else now
    listed = notified = 0
    async with store.write() as conn:
        for alert in await _eligible_alerts(conn, policy):
            targets = await resolve_targets(conn, list(alert.areas or ()))
            res = await conn.execute(list_statement(conn, alert.id, targets, now))
            listed += max(res.rowcount, 0)
            notified += await _notify(conn, policy, alert.id, alert.level, now)
    if listed or notified:
        log.info("follow-up: %d households listed, %d grid workers sent their list",
                 listed, notified)
    return PassResult(listed, notified)


async def _notify(conn: AsyncConnection, policy: Policy, alert_id: int, level: str,
                  now: float) -> int:
    """One message to each grid worker with households not yet sent for ``alert_id``."""
    reachable = select(contacts.c.id).where(contacts.c.phone.is_not(None), contacts.c.active)
    stamp = literal(now, Float())
    # The claim first: a second gateway's pass waits on these rows, then finds them taken.
    claimed = await conn.execute(
        update(followups)
        .where(followups.c.alert_id == literal(alert_id, _ID),
               followups.c.notified_at.is_(None),
               followups.c.grid_worker_id.in_(reachable.scalar_subquery()))
        .values(notified_at=stamp))
    if max(claimed.rowcount, 0) == 0:
        return 0
    g = contacts
    res = await conn.execute(plan_insert(
        {"alert_id": followups.c.alert_id, "kind": FOLLOWUP_KIND,
         "contact_id": followups.c.grid_worker_id, "role": g.c.role,
         "channel": policy.followup.channel,
         "priority": literal(priority_of(level, "grid_worker"), Integer()),
         "due_at": now, "created_at": now, "ack_required": True,
         "township_code": g.c.township_code, "village_code": g.c.village_code,
         "grid_code": g.c.grid_code},
        lambda sel: sel.select_from(followups.join(g, g.c.id == followups.c.grid_worker_id))
        .where(followups.c.alert_id == literal(alert_id, _ID),
               followups.c.notified_at == stamp)
        .group_by(followups.c.alert_id, followups.c.grid_worker_id, g.c.role,
                  g.c.township_code, g.c.village_code, g.c.grid_code)))
    return max(res.rowcount, 0)


# -- the grid worker's page -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FollowupList:
    """One grid worker's list for one warning, as the page shows it."""

    delivery_id: int
    alert_id: int
    grid_worker_id: int
    grid_worker_name: str
    alert_state: str
    level: str
    headline: str
    instruction: str
    households: tuple[Any, ...]


async def find_list(store: Store, delivery_id: int) -> FollowupList | None:
    """The list a follow-up delivery sent (None if the id is not a follow-up delivery)."""
    async with store.read() as conn:
        row = (await conn.execute(
            select(deliveries.c.id, deliveries.c.alert_id, deliveries.c.contact_id,
                   alerts.c.state, alerts.c.level, alerts.c.headline, alerts.c.instruction,
                   contacts.c.name)
            .join(alerts, alerts.c.id == deliveries.c.alert_id)
            .join(contacts, contacts.c.id == deliveries.c.contact_id)
            .where(deliveries.c.id == delivery_id, deliveries.c.kind == FOLLOWUP_KIND)
        )).one_or_none()
        if row is None:
            return None
        h = contacts
        households = (await conn.execute(
            select(followups.c.id, followups.c.reason, followups.c.outcome,
                   followups.c.people_moved, followups.c.outcome_at, followups.c.note,
                   h.c.name, h.c.address, h.c.phone, h.c.vulnerable_reason,
                   followups.c.village_code, followups.c.grid_code)
            .join(h, h.c.id == followups.c.household_id)
            .where(followups.c.alert_id == row.alert_id,
                   followups.c.grid_worker_id == row.contact_id)
            # Open ones first: what is still to do is on top.
            .order_by(followups.c.outcome.is_not(None), followups.c.village_code,
                      followups.c.grid_code, h.c.name, followups.c.id)
        )).all()
    return FollowupList(
        delivery_id=row.id, alert_id=row.alert_id, grid_worker_id=row.contact_id,
        grid_worker_name=row.name, alert_state=row.state, level=row.level,
        headline=row.headline, instruction=row.instruction, households=tuple(households))


class RecordError(ValueError):
    """What the grid worker sent cannot be recorded; the message says why (Chinese)."""


async def record_outcome(store: Store, fl: FollowupList, *, followup_id: int, outcome: str,
                         people: int | None, note: str | None,
                         now: float | None = None) -> None:
    """Record what the grid worker found at one household of their list, with an audit
    row naming the grid worker. A later record replaces an earlier one (the audit log
    keeps both)."""
    if outcome not in OUTCOME_ZH:
        raise RecordError("请选择结果：已当面告知、已转移、拒绝转移或未找到")
    if outcome == "evacuated":
        if people is None or not 1 <= people <= 1000:
            raise RecordError("已转移请填写转移人数（1至1000）")
    else:
        people = None
    now = time.time() if now is None else now
    actor = f"grid_worker:{fl.grid_worker_id}"
    async with store.write() as conn:
        res = await conn.execute(
            update(followups)
            .where(followups.c.id == literal(followup_id, _ID),
                   followups.c.alert_id == literal(fl.alert_id, _ID),
                   followups.c.grid_worker_id == literal(fl.grid_worker_id, _ID))
            .values(outcome=outcome, people_moved=people, outcome_at=now,
                    recorded_by=actor[:100], note=note)
            .returning(followups.c.household_id))
        household = res.scalar_one_or_none()
        if household is None:
            raise RecordError("该户不在您的跟进名单中")
        await conn.execute(insert(audit_log).values(
            at=now, actor=actor, action="followup", alert_id=fl.alert_id,
            detail={"followup_id": followup_id, "household_id": household,
                    "outcome": outcome, "people_moved": people}))


# -- the township's view --------------------------------------------------------------

async def followup_page(store: Store, alert_id: int, *, township: str | None,
                        after: int | None, limit: int) -> list[dict[str, Any]]:
    """The follow-ups of ``alert_id`` by id (``after``: the last id of the previous page)."""
    h, g = contacts, contacts.alias("gw")
    where = [followups.c.alert_id == alert_id]
    if township:
        where.append(followups.c.township_code == township)
    if after is not None:
        where.append(followups.c.id > after)
    async with store.board() as conn:
        rows = (await conn.execute(
            select(followups, h.c.name.label("household"), h.c.address, h.c.phone,
                   h.c.vulnerable_reason, g.c.name.label("grid_worker"))
            .join(h, h.c.id == followups.c.household_id)
            .outerjoin(g, g.c.id == followups.c.grid_worker_id)
            .where(*where).order_by(followups.c.id).limit(limit)
        )).all()
    return [
        {"id": r.id, "household_id": r.household_id, "household": r.household,
         "address": r.address, "phone": r.phone, "reason": r.reason,
         "vulnerable_reason": r.vulnerable_reason, "grid_worker_id": r.grid_worker_id,
         "grid_worker": r.grid_worker, "township": r.township_code,
         "village": r.village_code, "grid": r.grid_code, "created_at": r.created_at,
         "notified_at": r.notified_at, "outcome": r.outcome,
         "people_moved": r.people_moved, "outcome_at": r.outcome_at,
         "recorded_by": r.recorded_by, "note": r.note}
        for r in rows
    ]


async def evacuation_counts(store: Store, alert_id: int, *,
                            township: str | None) -> dict[str, Any]:
    """Households followed up and people moved per village and township (one GROUP BY)."""
    f = followups
    where = [f.c.alert_id == alert_id]
    if township:
        where.append(f.c.township_code == township)

    def count(outcome: str) -> Any:
        return func.sum(case((f.c.outcome == outcome, 1), else_=0))

    async with store.board() as conn:
        rows = (await conn.execute(
            select(f.c.township_code, f.c.village_code, func.count().label("households"),
                   func.sum(case((f.c.outcome.is_(None), 1), else_=0)).label("open"),
                   count("informed").label("informed"), count("evacuated").label("evacuated"),
                   count("refused").label("refused"), count("not_found").label("not_found"),
                   func.coalesce(func.sum(f.c.people_moved), 0).label("people_moved"))
            .where(*where).group_by(f.c.township_code, f.c.village_code)
            .order_by(f.c.township_code, f.c.village_code)
        )).all()
    keys = ("households", "open", "informed", "evacuated", "refused", "not_found",
            "people_moved")
    townships: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = townships.setdefault(r.township_code or "", {
            "township": r.township_code, **dict.fromkeys(keys, 0), "villages": []})
        village = {"village": r.village_code, **{k: int(getattr(r, k) or 0) for k in keys}}
        t["villages"].append(village)
        for k in keys:
            t[k] += village[k]
    totals = {k: sum(t[k] for t in townships.values()) for k in keys}
    return {"alert_id": alert_id, "totals": totals, "townships": list(townships.values())}


def live(state: str) -> bool:
    return state in LIVE_ALERT_STATES


__all__: Sequence[str] = (
    "FOLLOWUP_KIND", "OUTCOME_ZH", "REASON_ZH", "FollowupList", "PassResult", "RecordError",
    "evacuation_counts", "find_list", "follow_up", "followup_page", "list_statement",
    "record_outcome",
)
