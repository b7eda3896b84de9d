"""Where an alert becomes deliveries.

An accepted alert is committed first (state ``dispatching``, ``plan_stage`` 0). The planner
then writes its deliveries with ``INSERT ... SELECT`` straight from the registry — never a
Python loop over recipients — in stages, each its own transaction that also advances the
alert's plan cursor:

* stage 0: responsible people (duty officers, village heads, grid workers) and speakers;
* stage 1: households, a chunk of villages per transaction;
* stage 2: done, the alert becomes ``active``.

So the first messages leave while the last villages are still being planned, and a crash
resumes planning exactly where the last committed chunk ended (cursor and rows commit
together).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.delivery import plan_insert
from warngate.duty import DUTY_ROLES, duty_priority
from warngate.policy import LEVEL_RANK, LEVELS, ROLE_PRIORITY, Policy, RolePolicy
from warngate.store import Store
from warngate.store.schema import alerts, contacts, regions, speakers
from warngate.waiting import wait_set

log = logging.getLogger(__name__)

STAGE_RESPONSIBLE = 0
STAGE_HOUSEHOLDS = 1
STAGE_DONE = 2


def priority_of(level: str, role: str) -> int:
    """Lower goes first: red before orange, responsible people before households."""
    return (len(LEVELS) - 1 - LEVEL_RANK[level]) * 10 + ROLE_PRIORITY.get(role, 4)


@dataclass(frozen=True, slots=True)
class Targets:
    """An alert's areas resolved against the registry."""

    townships: tuple[str, ...] = ()
    villages: tuple[str, ...] = ()
    grids: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    #: Every township the warning touches, if only by one grid (roles with reach township).
    touched_townships: tuple[str, ...] = ()
    #: Counties the warning covers whole: named, or every township named (reach county).
    counties: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.townships or self.villages or self.grids)

    def covers(self, table: Any, *, with_grids: bool = True) -> ColumnElement[bool]:
        """SQL condition: the row's township/village/grid lies inside the targets."""
        terms: list[ColumnElement[bool]] = []
        if self.townships:
            terms.append(table.c.township_code.in_(self.townships))
        if self.villages:
            terms.append(table.c.village_code.in_(self.villages))
        if self.grids and with_grids:
            terms.append(table.c.grid_code.in_(self.grids))
        return or_(*terms) if terms else literal(False)

    def reaches(self, reach: str) -> ColumnElement[bool]:
        """SQL condition on ``contacts``: inside the area, or within the role's ``reach``."""
        if reach == "township":
            # Every village and grid of the area lies in a touched township, so this
            # covers the area too.
            return (contacts.c.township_code.in_(self.touched_townships)
                    if self.touched_townships else literal(False))
        if reach == "county" and self.counties:
            return or_(self.covers(contacts), contacts.c.region_code.in_(self.counties))
        return self.covers(contacts)


async def resolve_targets(conn: AsyncConnection, codes: Sequence[str]) -> Targets:
    """Region codes → townships, villages and grids; a county code means all its townships."""
    wanted = list(dict.fromkeys(c.strip() for c in codes if c and c.strip()))
    if not wanted:
        return Targets()
    rows = (
        await conn.execute(
            select(regions.c.code, regions.c.level, regions.c.parent_code,
                   regions.c.township_code).where(regions.c.code.in_(wanted))
        )
    ).all()
    level_of = {r.code: r.level for r in rows}
    counties = [c for c in wanted if level_of.get(c) == "county"]
    townships = [c for c in wanted if level_of.get(c) == "township"]
    touched = [r.township_code for r in rows if r.level in ("village", "grid")
               and r.township_code]
    if townships:
        # A county all of whose townships are named is covered whole, as if named.
        named: dict[str, int] = {}
        for r in rows:
            if r.level == "township" and r.parent_code and r.parent_code not in counties:
                named[r.parent_code] = named.get(r.parent_code, 0) + 1
        if named:
            sizes = (await conn.execute(
                select(regions.c.parent_code, func.count())
                .where(regions.c.level == "township", regions.c.parent_code.in_(list(named)))
                .group_by(regions.c.parent_code))).all()
            counties += [parent for parent, n in sizes if named.get(parent) == n]
    if counties:
        townships += list(
            (
                await conn.execute(
                    select(regions.c.code).where(
                        regions.c.level == "township", regions.c.parent_code.in_(counties)
                    )
                )
            ).scalars()
        )
    townships = list(dict.fromkeys(townships))
    return Targets(
        townships=tuple(townships),
        villages=tuple(c for c in wanted if level_of.get(c) == "village"),
        grids=tuple(c for c in wanted if level_of.get(c) == "grid"),
        unknown=tuple(c for c in wanted if c not in level_of),
        touched_townships=tuple(dict.fromkeys(townships + touched)),
        counties=tuple(dict.fromkeys(counties)),
    )


def _level_roles(policy: Policy, level: str, status: str, event: str = "",
                 community: bool = False) -> dict[str, RolePolicy]:
    """The roles an alert reaches: its level's, with its hazards' merged over them; a
    drill's only those the policy names for drills (households only in a community-wide
    drill)."""
    roles = policy.roles_for(level, event)
    if status != "Actual":
        allowed = policy.drill_roles(community)
        roles = {r: p for r, p in roles.items() if r in allowed}
    return roles


#: Who can be sent anything: on the roster, and with a phone (a household without one is
#: reached through its bound grid worker, never by a message to nobody).
#: The phone is tested through coalesce() so that no planner takes ix_contacts_phone for
#: "phone IS NOT NULL" (SQLite did, scanning every contact for each chunk of villages:
#: planning a million households went from 260k to 40k a second).
_REACHABLE = and_(contacts.c.active.is_(True),
                  func.coalesce(contacts.c.phone, literal("", String)) != literal("", String))


async def estimate_recipients(
    conn: AsyncConnection, policy: Policy, level: str, status: str, targets: Targets,
    *, event: str = "", community: bool = False,
) -> dict[str, int]:
    """Recipients per channel of the first step, for the answer to whoever sent the alert."""
    counts: dict[str, int] = {}
    if targets.empty:
        return counts
    for role, rp in _level_roles(policy, level, status, event, community).items():
        if role == "household":
            # Counted from the (role, village) index alone: checking each household's
            # phone and roster flag made accepting a 1M-household warning take a second
            # instead of 60 ms. Households off the roster or without a phone are counted.
            where: ColumnElement[bool] = targets.covers(contacts)
        else:
            where = and_(_REACHABLE, targets.reaches(rp.reach))
        n = (
            await conn.execute(
                select(func.count())
                .select_from(contacts)
                .where(contacts.c.role == role, where)
            )
        ).scalar_one()
        for channel in rp.channels:
            counts[channel] = counts.get(channel, 0) + n
    sp = policy.levels[level].speakers
    if sp.enabled and status == "Actual":
        n = (
            await conn.execute(
                select(func.count())
                .select_from(speakers)
                .where(_speaker_cover(targets))
            )
        ).scalar_one()
        counts["speaker"] = counts.get("speaker", 0) + n
    return counts


def _speaker_cover(targets: Targets) -> ColumnElement[bool]:
    # A speaker serves a whole village: a grid-level alert still sounds its village's speaker.
    terms: list[ColumnElement[bool]] = []
    if targets.townships:
        terms.append(speakers.c.township_code.in_(targets.townships))
    villages = set(targets.villages) | {g[:12] for g in targets.grids}
    if villages:
        terms.append(speakers.c.village_code.in_(sorted(villages)))
    return or_(*terms) if terms else literal(False)


def _contact_rows(
    *,
    alert_id: int,
    kind: str,
    role: str,
    level: str,
    channel: str,
    rp: RolePolicy,
    escalates: bool,
    now: float,
    where: ColumnElement[bool],
) -> Any:
    # A role that must answer but has no steps still has a deadline (ack.within): when it
    # passes unanswered the person is silent, and the duty officers are told.
    escalate_at = (now + (rp.escalation[0].after if rp.escalation else rp.ack.within)
                   if escalates and rp.ack.required else None)
    rank = func.row_number().over(partition_by=contacts.c.village_code, order_by=contacts.c.id)
    # Who is on duty now receives first (duty rosters); only duty roles pay for the look-up.
    priority: Any = priority_of(level, role)
    if role in DUTY_ROLES:
        priority = duty_priority(priority, contacts.c.id, contacts.c.role, now)
    return plan_insert(
        {"alert_id": alert_id, "kind": kind, "contact_id": contacts.c.id,
         "role": contacts.c.role, "channel": channel,
         "priority": priority, "village_rank": rank, "due_at": now,
         "ack_required": rp.ack.required, "escalate_at": escalate_at,
         "township_code": contacts.c.township_code, "village_code": contacts.c.village_code,
         "grid_code": contacts.c.grid_code, "created_at": now},
        lambda sel: sel.where(contacts.c.role == role, _REACHABLE, where),
    )


class Planner:
    """Turns accepted alerts into deliveries, chunk by chunk, resumable after a crash."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        villages_per_chunk: int = 200,
        on_planned: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.villages_per_chunk = villages_per_chunk
        self.on_planned = on_planned
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Plan pending alerts forever; woken by ``wake`` when a new alert is accepted."""
        while True:
            self.wake.clear()
            try:
                busy = await self.plan_pending()
            except Exception:  # a failed chunk rolls back; retry after a pause, don't die
                log.exception("planning failed; retrying")
                busy = False
                await asyncio.sleep(1.0)
            if not busy:
                await wait_set(self.wake, 2.0)

    async def plan_pending(self) -> bool:
        """Advance every alert that still has planning to do by one chunk; True if any."""
        async with self.store.read() as conn:
            pending = (
                await conn.execute(
                    select(alerts.c.id)
                    .where(alerts.c.state == "dispatching", alerts.c.plan_stage < STAGE_DONE)
                    .order_by(alerts.c.id)
                )
            ).scalars().all()
        for alert_id in pending:
            await self.plan_chunk(alert_id)
        return bool(pending)

    async def plan_alert(self, alert_id: int) -> None:
        """Plan one alert to the end (tests and benchmarks)."""
        while await self.plan_chunk(alert_id):
            pass

    async def plan_chunk(self, alert_id: int) -> bool:
        """Plan the next chunk of ``alert_id``; return False when there is nothing left."""
        async with self.store.write() as conn:
            added, more = await self.advance(conn, alert_id, time.time())
        if added:
            self.on_planned()
        return more

    async def plan_first(self, conn: AsyncConnection, alert_id: int, now: float) -> int:
        """Inside the transaction that accepts an alert: plan until someone is planned.

        Responsible people and speakers first, then (if there were none) the first small
        chunk of households, so the dispatcher has work the moment the alert commits.
        """
        added, more = await self.advance(conn, alert_id, now)
        if not added and more:
            added, _ = await self.advance(conn, alert_id, now)
        return added

    async def advance(self, conn: AsyncConnection, alert_id: int, now: float
                      ) -> tuple[int, bool]:
        """One planning step in ``conn``'s transaction: (deliveries added, more to do)."""
        alert = (
            await conn.execute(select(alerts).where(alerts.c.id == alert_id))
        ).one_or_none()
        if alert is None or alert.state != "dispatching" or alert.plan_stage >= STAGE_DONE:
            return 0, False
        targets = await resolve_targets(conn, alert.areas)
        if alert.plan_stage == STAGE_RESPONSIBLE:
            added = await self._plan_responsible(conn, alert, targets, now)
            stage, cursor = STAGE_HOUSEHOLDS, None
        else:
            added, cursor = await self._plan_households(conn, alert, targets, now)
            stage = STAGE_HOUSEHOLDS if cursor is not None else STAGE_DONE
        values: dict[str, Any] = {
            "plan_stage": stage,
            "plan_cursor": cursor,
            "planned_count": alerts.c.planned_count + added,
            "updated_at": now,
        }
        if stage == STAGE_DONE:
            values["state"] = "active"
            if alert.planned_count + added == 0:
                values["no_recipients"] = True
                await self._unreached_alarm(conn, alert, now)
        # Claim this step of the plan: a second process planning the same alert finds the
        # cursor moved, and its transaction rolls back.
        moved = await conn.execute(
            update(alerts)
            .where(
                alerts.c.id == alert_id,
                alerts.c.plan_stage == alert.plan_stage,
                and_(alerts.c.plan_cursor == alert.plan_cursor)
                if alert.plan_cursor is not None
                else alerts.c.plan_cursor.is_(None),
                alerts.c.state == "dispatching",
            )
            .values(**values)
        )
        if moved.rowcount != 1:
            raise _LostRace(alert_id)
        return added, stage != STAGE_DONE

    async def _plan_responsible(
        self, conn: AsyncConnection, alert: Any, targets: Targets, now: float
    ) -> int:
        if targets.empty:
            return 0
        kind = _kind_of(alert.msg_type)
        added = 0
        for role, rp in _level_roles(self.policy, alert.level, alert.status, alert.event,
                                     alert.community_drill).items():
            if role == "household":
                continue
            for i, channel in enumerate(rp.channels):
                res = await conn.execute(
                    _contact_rows(
                        alert_id=alert.id, kind=kind, role=role, level=alert.level,
                        channel=channel, rp=rp, escalates=i == 0, now=now,
                        where=targets.reaches(rp.reach),
                    )
                )
                added += max(res.rowcount, 0)
        sp = self.policy.levels[alert.level].speakers
        if sp.enabled and alert.status == "Actual":
            rank = func.row_number().over(
                partition_by=speakers.c.village_code, order_by=speakers.c.id
            )
            res = await conn.execute(plan_insert(
                {"alert_id": alert.id, "kind": kind, "speaker_id": speakers.c.id,
                 "role": "speaker", "channel": "speaker",
                 "priority": priority_of(alert.level, "speaker"), "village_rank": rank,
                 "due_at": now, "township_code": speakers.c.township_code,
                 "village_code": speakers.c.village_code, "created_at": now,
                 # Red warnings sound again at the policy's interval (escalation.py repeats).
                 "escalate_at": now + sp.repeat_every
                 if sp.repeat_every and kind == "alert" else None},
                lambda sel: sel.where(_speaker_cover(targets)),
            ))
            added += max(res.rowcount, 0)
        return added

    async def _unreached_alarm(self, conn: AsyncConnection, alert: Any, now: float) -> None:
        """A warning that matched nobody is never silent: a WARNING, and the policy's duty
        officers of the alert's county (of every county, when its codes name none we
        know) are told at once."""
        log.warning("alert %s (%s) matched no recipient: areas %s; telling %s",
                    alert.id, alert.headline, alert.areas, list(self.policy.unreached.roles))
        un = self.policy.unreached
        if not un.roles:
            return
        counties = sorted({str(a)[:6] for a in alert.areas if str(a)[:6].isdigit()})
        known = (await conn.execute(
            select(func.count()).select_from(contacts)
            .where(contacts.c.role.in_(un.roles), contacts.c.region_code.in_(counties))
        )).scalar_one()
        where: ColumnElement[bool] = and_(contacts.c.role.in_(un.roles), _REACHABLE)
        if known:
            where = and_(where, contacts.c.region_code.in_(counties))
        for channel in un.channels:
            await conn.execute(plan_insert(
                {"alert_id": alert.id, "kind": "nobody", "contact_id": contacts.c.id,
                 "role": contacts.c.role, "channel": channel, "priority": 0, "due_at": now,
                 "township_code": contacts.c.township_code,
                 "village_code": contacts.c.village_code, "grid_code": contacts.c.grid_code,
                 "created_at": now},
                lambda sel: sel.where(where),
            ))

    async def _plan_households(
        self, conn: AsyncConnection, alert: Any, targets: Targets, now: float
    ) -> tuple[int, str | None]:
        rp = _level_roles(self.policy, alert.level, alert.status, alert.event,
                          alert.community_drill).get("household")
        if rp is None or targets.empty:
            return 0, None
        kind = _kind_of(alert.msg_type)
        cursor: str | None = alert.plan_cursor
        if cursor == "grids":
            chunk: list[str] = []
        else:
            village_cover = or_(
                regions.c.township_code.in_(targets.townships),
                regions.c.code.in_(targets.villages),
            )
            q = select(regions.c.code).where(regions.c.level == "village", village_cover)
            if cursor is not None:
                q = q.where(regions.c.code > cursor)
            # A small first chunk gets the first households' messages out at once; later
            # chunks are large so that a million households plan in seconds.
            size = self.villages_per_chunk if cursor is not None else min(
                4, self.villages_per_chunk)
            chunk = list(
                (await conn.execute(q.order_by(regions.c.code).limit(size))).scalars()
            )
        added = 0
        if chunk:
            where: ColumnElement[bool] = contacts.c.village_code.in_(chunk)
            next_cursor: str | None = chunk[-1]
        else:
            # Villages done; households of grids targeted on their own come last.
            covered = Targets(townships=targets.townships, villages=targets.villages)
            where = and_(
                contacts.c.grid_code.in_(targets.grids), ~covered.covers(contacts)
            ) if targets.grids and cursor != "grids" else literal(False)
            next_cursor = "grids" if targets.grids and cursor != "grids" else None
        if where is not None:
            for i, channel in enumerate(rp.channels):
                res = await conn.execute(
                    _contact_rows(
                        alert_id=alert.id, kind=kind, role="household", level=alert.level,
                        channel=channel, rp=rp, escalates=i == 0, now=now, where=where,
                    )
                )
                added += max(res.rowcount, 0)
        return added, next_cursor


class _LostRace(Exception):
    """Another process advanced this alert's plan first; our transaction rolled back."""


def _kind_of(msg_type: str) -> str:
    return "update" if msg_type == "Update" else "alert"
