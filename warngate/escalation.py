"""叫应: whoever must acknowledge and has not, by the policy's deadline, gets the next step.

A delivery that needs an acknowledgement carries ``escalate_at``: when its next policy step
is due. A failed delivery (unreachable number, unanswered call) has its ``escalate_at``
pulled forward to the moment it failed.

A sweep works on sets, like planning, never a row at a time. Per chunk of overdue
deliveries (oldest first) one transaction takes their deadlines (``escalate_at`` becomes
NULL, so each is taken once) and adds the next step for all of them with one
``INSERT ... SELECT``: the policy's steps are a small table joined on (level, role, step),
the supervisor chain is joined from ``contacts``.

* PostgreSQL: one statement, ``WITH claimed AS (UPDATE ... WHERE id IN (SELECT ... FOR
  UPDATE SKIP LOCKED) RETURNING ...) INSERT ... SELECT ... FROM claimed``, so several
  gateways sweep side by side, each row's deadline taken by one of them, and each claimed
  row written once.
* SQLite (one writer at a time): the ``INSERT ... SELECT`` reads the chunk, then an
  ``UPDATE`` takes the same chunk; rows added in between are outside it (``id <= max``).

The sweep only ever adds deliveries.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    ColumnElement,
    Float,
    FromClause,
    Integer,
    Select,
    String,
    Update,
    and_,
    any_,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert

from warngate import duty
from warngate.delivery import (
    PENDING,
    Event,
    delivery_rows,
    in_states,
    insert_rows,
    move,
    plan_insert,
    state_is,
)
from warngate.delivery import DeliveryState as S
from warngate.planning import priority_of
from warngate.policy import LEVEL_RANK, LEVELS, ROLE_PRIORITY, Policy
from warngate.store import Store
from warngate.store.schema import (
    LIVE_ALERT_STATES,
    alerts,
    contacts,
    deliveries,
    regions,
    speakers,
)

log = logging.getLogger(__name__)

_LIVE = LIVE_ALERT_STATES
#: Overdue deliveries per transaction: 100,000 overdue people take ten, and a sweep's row
#: locks and its rollback after a crash stay small.
CHUNK = 10_000


def _table(name: str, rows: list[dict[str, ColumnElement[Any]]]) -> FromClause | None:
    """A few constant rows as a table (``SELECT ... UNION ALL SELECT ...``): SQLite has no
    ``VALUES ... AS t (columns)``."""
    if not rows:
        return None
    selects = [select(*(v.label(k) for k, v in row.items())) for row in rows]
    return (selects[0] if len(selects) == 1 else union_all(*selects)).subquery(name)


def _priority(level: ColumnElement[Any], role: ColumnElement[Any]) -> ColumnElement[int]:
    """``priority_of(level, role)`` in SQL, for a role known only in the database."""
    known = [(and_(level == lv, role == r), literal(priority_of(lv, r), Integer))
             for lv in LEVELS for r in ROLE_PRIORITY]
    # A role outside ROLE_PRIORITY (county_duty, ...) takes priority_of's default.
    other = case(*((level == lv, literal(priority_of(lv, ""), Integer)) for lv in LEVELS))
    return case(*known, else_=other)


@dataclass(frozen=True)
class _Claim:
    """A chunk of overdue deliveries: ``rows`` to select the next steps from, and on SQLite
    the ``UPDATE`` that takes their deadlines once those steps are added."""

    rows: FromClause
    take: Update | None


async def _claim(
    conn: AsyncConnection, store: Store, now: float, limit: int,
    conditions: Sequence[ColumnElement[bool]], columns: Sequence[ColumnElement[Any]],
    new_deadline: ColumnElement[Any] | None = None,
) -> _Claim:
    """Up to ``limit`` deliveries past their ``escalate_at``, oldest first, with their
    alert's ``level``, ``state`` and ``expires``; taking them sets ``escalate_at`` to
    ``new_deadline`` (an expression over ``deliveries`` and ``alerts``; NULL if None)."""
    due = select(deliveries.c.id).where(deliveries.c.escalate_at <= now, *conditions)
    if store.is_postgres:
        due = (due.order_by(deliveries.c.escalate_at).limit(limit)
               .with_for_update(skip_locked=True))
    else:
        # Two statements read the chunk: the same rows, in the same order (rowid breaks
        # ties, free in SQLite's index), and none that the first one adds.
        last = (await conn.execute(select(func.max(deliveries.c.id)))).scalar_one()
        due = (due.where(deliveries.c.id <= (last or 0))
               .order_by(deliveries.c.escalate_at, deliveries.c.id).limit(limit))
    # PostgreSQL: ``id = ANY(ARRAY(...))`` looks the chunk up by key; ``id IN (...)`` was
    # planned as a hash join over a scan of every delivery, once per chunk.
    chunk = (deliveries.c.id == any_(func.array(due.scalar_subquery()))
             if store.is_postgres else deliveries.c.id.in_(due))
    take = (
        update(deliveries)
        .where(chunk, alerts.c.id == deliveries.c.alert_id)
        .values(escalate_at=new_deadline)
    )
    alert_columns = (alerts.c.level, alerts.c.state.label("alert_state"), alerts.c.expires)
    if store.is_postgres:
        return _Claim(take.returning(*columns, *alert_columns).cte("claimed"), None)
    rows = (select(*columns, *alert_columns)
            .join_from(deliveries, alerts, alerts.c.id == deliveries.c.alert_id)
            .where(deliveries.c.id.in_(due)).subquery("claimed"))
    return _Claim(rows, take)


def _steps(policy: Policy) -> FromClause | None:
    """The policy's escalation steps as a table: (level, role, n, to_supervisor, to_duty,
    channel, next_in); step ``n`` is taken by a delivery at step ``n``, ``next_in`` is how
    long after it the following step is due.

    After the last step comes the deadline: the last step's ``next_in`` makes its row due
    again at the later of ``ack.within`` after the first message and the step itself; a
    row at a step with no entry here has run out of steps (``_next_steps``: exhausted).
    """
    rows: list[dict[str, ColumnElement[Any]]] = []
    for level, lp in policy.levels.items():
        roles = dict(lp.roles)
        # Roles only a hazard adds (群测群防员 for 地质灾害) escalate by the hazard's entry;
        # a role the level names keeps the level's steps (the table knows no event).
        for hp in policy.hazards.values():
            if LEVEL_RANK[level] >= LEVEL_RANK[hp.min_level]:
                for role, rp in hp.roles.items():
                    roles.setdefault(role, rp)
        for role, rp in roles.items():
            steps = rp.escalation
            for n, step in enumerate(steps):
                following = steps[n + 1].after if n + 1 < len(steps) else max(
                    rp.ack.within, step.after)
                rows.append({
                    "level": literal(level, String), "role": literal(role, String),
                    "n": literal(n, Integer),
                    "to_supervisor": literal(step.to == "supervisor", Boolean),
                    "to_duty": literal(step.to == "duty", Boolean),
                    "channel": literal(step.channel, String),
                    "next_in": literal(following - step.after, Float),
                })
    return _table("steps", rows)


_ESCALATING = (deliveries.c.id, deliveries.c.alert_id, deliveries.c.contact_id,
               deliveries.c.on_behalf_of, deliveries.c.role, deliveries.c.step,
               deliveries.c.township_code, deliveries.c.village_code, deliveries.c.grid_code)


async def escalate_due(
    store: Store, policy: Policy, *, limit: int = CHUNK, now: float | None = None
) -> int:
    """Take the next step for every un-acknowledged delivery past its time; return how many.

    Works through everything overdue at ``now``, ``limit`` deliveries per transaction. A
    person whose last step is taken and whose ``ack.within`` has passed (or who has no
    supervisor to call) is *silent*: their row gets ``silent_at = now``, and at the end of
    the sweep the policy's duty officers get one alarm per alert and township listing the
    people silenced (:func:`alarm_silent`).
    """
    now = time.time() if now is None else now
    steps = _steps(policy)
    added = silenced = 0
    while True:
        async with store.write() as conn:
            claim = await _claim(conn, store, now, limit, (
                deliveries.c.acked_at.is_(None), deliveries.c.role != "speaker"), _ESCALATING)
            if steps is None:
                # No steps at all: whoever still had a deadline has run out of them.
                silent = select(claim.rows.c.id).where(claim.rows.c.alert_state.in_(_LIVE))
                claimed, n_added, n_silent = await _apply(conn, store, claim, None, silent, now)
            else:
                rows = _next_steps(claim.rows, steps, now, shared=store.is_postgres)
                reachable = select(*(c for c in rows.c if c.name in deliveries.c),
                                   (_priority(rows.c.level, rows.c.role) - 1).label("priority")
                                   ).where(~rows.c.exhausted, ~rows.c.unreachable
                                           ).subquery("reachable")
                silent = (select(rows.c.claimed_id)
                          .where(or_(rows.c.exhausted, rows.c.unreachable)).distinct())
                claimed, n_added, n_silent = await _apply(
                    conn, store, claim, insert_rows(reachable), silent, now)
            added, silenced = added + n_added, silenced + n_silent
        if claimed < limit:
            break
    if silenced:
        log.warning("%d people did not answer by their deadline after their last step "
                    "(or have no supervisor to call)", silenced)
        SILENT_COUNTS["people"] += silenced
    if added:
        log.info("escalated %d un-acknowledged deliveries", added)
    if silenced and policy.silent.roles:
        # Also alarms a group a crash left unalarmed (within CATCH_UP).
        await alarm_silent(store, policy, now=now)
    return added


#: Since start: people found silent, and alarm messages planned for them (metrics).
SILENT_COUNTS: Counter[str] = Counter()


async def _apply(
    conn: AsyncConnection, store: Store, claim: _Claim, add: Insert | None,
    silent: Select[Any] | None, now: float,
) -> tuple[int, int, int]:
    """Take the claimed deliveries, adding ``add``'s rows and marking the rows ``silent``
    selects (ids of claimed rows) ``silent_at = now``: (claimed, added, silenced)."""
    if claim.take is None:
        # PostgreSQL: the claim is a data-modifying CTE; all in one statement, which writes
        # each claimed row once. A row cannot be written twice by one statement, so the
        # silent rows (few) are marked by a second one.
        inserted = add.returning(deliveries.c.id).cte("inserted") if add is not None else None
        counts = (await conn.execute(select(
            select(func.count()).select_from(claim.rows).scalar_subquery(),
            select(func.count()).select_from(inserted).scalar_subquery()
            if inserted is not None else literal(0, Integer),
            func.array(silent.scalar_subquery()) if silent is not None
            else literal(None, ARRAY(BigInteger)),
        ))).one()
        ids = list(counts[2] or [])
        if ids:
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == any_(bindparam("silent_ids", ids,
                                                         type_=ARRAY(BigInteger))))
                .values(silent_at=now))
        return int(counts[0]), int(counts[1]), len(ids)
    added = max((await conn.execute(add)).rowcount, 0) if add is not None else 0
    marked = max((await conn.execute(
        update(deliveries).where(deliveries.c.id.in_(silent.scalar_subquery()))
        .values(silent_at=now))).rowcount, 0) if silent is not None else 0
    claimed = max((await conn.execute(claim.take)).rowcount, 0)
    return claimed, added, marked


def _next_steps(d: FromClause, steps: FromClause, now: float, *, shared: bool) -> FromClause:
    """The next step of every claimed delivery in ``d`` (all but its priority), with
    ``level``, ``claimed_id`` (the claimed row), ``exhausted`` (no step left for it) and
    ``unreachable`` (it would call a supervisor the person does not have).

    ``shared``: as a CTE, for one statement that reads it twice (on SQLite a statement
    starting with ``WITH`` reports no row count, so there it is a subquery).

    The person is who must answer: the recipient, or whom a supervisor was called for.
    Their role's policy decides every step, also those that call their supervisor. A
    ``to: duty`` step calls the other duty officers of the person's region who are not on
    shift now (``warngate.duty``), each on the person's behalf, or their supervisor when
    there are none; only the first of them carries the person's next deadline.
    """
    person = contacts.alias("person")
    supervisor = contacts.alias("supervisor")
    colleague = contacts.alias("colleague")
    person_id = func.coalesce(d.c.on_behalf_of, d.c.contact_id)
    person_role = case((d.c.on_behalf_of.is_(None), d.c.role),
                       else_=func.coalesce(person.c.role, d.c.role))
    to_duty = steps.c.to_duty
    to_other = or_(steps.c.to_supervisor, to_duty)
    helper_id = case((to_duty, func.coalesce(colleague.c.id, supervisor.c.id)),
                     else_=supervisor.c.id)
    helper_role = case((to_duty, func.coalesce(colleague.c.role, supervisor.c.role)),
                       else_=supervisor.c.role)
    deadline = literal(now, Float) + steps.c.next_in
    rows = (
        delivery_rows({
            "alert_id": d.c.alert_id,
            "contact_id": case((to_other, helper_id), else_=person_id),
            "on_behalf_of": case((to_other, person_id), else_=None),
            "role": case((to_other, helper_role), else_=person_role),
            "channel": steps.c.channel,
            "step": d.c.step + 1,
            "due_at": now,
            "ack_required": True,
            # CASE, not OR: the colleague subquery runs only for rows that call colleagues.
            "escalate_at": case(
                (colleague.c.id.is_(None), deadline),
                (colleague.c.id == duty.first_colleague(person, now), deadline),
                else_=literal(None, Float)),
            "township_code": d.c.township_code,
            "village_code": d.c.village_code,
            "grid_code": d.c.grid_code,
            "created_at": now,
        })
        .add_columns(d.c.level, d.c.id.label("claimed_id"),
                     steps.c.n.is_(None).label("exhausted"),
                     func.coalesce(and_(to_other, helper_id.is_(None)),
                                   literal(False, Boolean)).label("unreachable"))
        .select_from(
            d.outerjoin(person, person.c.id == person_id)
            .outerjoin(steps, and_(steps.c.level == d.c.level, steps.c.role == person_role,
                                   steps.c.n == d.c.step))
            .outerjoin(supervisor, supervisor.c.id == person.c.supervisor_id)
            # The township first: the index (role, township_code) finds a person's few
            # colleagues, where role alone would find every duty officer, once per row.
            .outerjoin(colleague, and_(
                to_duty, colleague.c.township_code.is_not_distinct_from(person.c.township_code),
                duty.colleague_of(colleague, person, now))))
        .where(d.c.alert_state.in_(_LIVE))
    )
    return rows.cte("next_steps") if shared else rows.subquery("next_steps")


async def alarm_silent(store: Store, policy: Policy, *, now: float | None = None) -> int:
    """The duty officers' alarm: for every live alert, township and sweep that silenced
    people (``silent_at``) and has no alarm yet, one message per recipient and channel of
    ``policy.silent`` — the roles registered at that township or at its county (an officer
    who is among the silent is told too: whoever holds their phone now should know).
    Returns the messages planned.

    The alarm rows carry the sweep's ``silent_at`` as their ``created_at`` and the
    township's code: the renderer lists the people by them, and the next sweep knows that
    group was alarmed (a crash between a sweep's chunks and its alarm loses nothing). Each
    person is listed in one alarm only, as their ``silent_at`` is set once.
    """
    now = time.time() if now is None else now
    rule = policy.silent
    if not rule.roles or not rule.channels:
        return 0
    s = deliveries.alias("s")
    done = deliveries.alias("done")
    person = contacts.alias("person")
    town = regions.alias("town")
    # Grouped first (the partial index on silent_at), joined after: a sweep that silenced
    # 100,000 people does a few groups' work, not 100,000 rows'. Groups older than
    # CATCH_UP (a crash long ago) are left to the people lists.
    raw = (select(s.c.alert_id, s.c.township_code, s.c.silent_at)
           .where(s.c.silent_at.is_not(None), s.c.silent_at > now - CATCH_UP,
                  s.c.silent_at <= now)
           # In the partial index's order, so it is read instead of every delivery.
           .group_by(s.c.alert_id, s.c.silent_at, s.c.township_code).subquery("raw"))
    listed_at_county = deliveries.alias("at_county")
    # People without a township (a county's own duty officer): their county's officers.
    county = case((raw.c.township_code.is_not(None), town.c.parent_code), else_=(
        select(func.min(person.c.region_code))
        .join(listed_at_county, person.c.id == func.coalesce(
            listed_at_county.c.on_behalf_of, listed_at_county.c.contact_id))
        .where(listed_at_county.c.alert_id == raw.c.alert_id,
               listed_at_county.c.silent_at == raw.c.silent_at,
               listed_at_county.c.township_code.is_(None))
        .scalar_subquery()))
    groups = (
        select(raw.c.alert_id, raw.c.township_code, raw.c.silent_at,
               county.label("county_code"))
        .select_from(raw.join(alerts, alerts.c.id == raw.c.alert_id)
                     .outerjoin(town, town.c.code == raw.c.township_code))
        .where(alerts.c.state.in_(_LIVE),
               ~exists().where(done.c.alert_id == raw.c.alert_id, done.c.kind == "silent",
                               done.c.created_at == raw.c.silent_at,
                               done.c.township_code.is_not_distinct_from(raw.c.township_code)))
        .subquery("silent_groups")
    )
    channels = _table("channels", [{"channel": literal(c, String)} for c in rule.channels])
    assert channels is not None
    recipient = and_(contacts.c.role.in_(rule.roles), contacts.c.active.is_(True),
                     or_(contacts.c.region_code == groups.c.township_code,
                         contacts.c.region_code == groups.c.county_code))
    stmt = plan_insert(
        {"alert_id": groups.c.alert_id, "kind": "silent", "contact_id": contacts.c.id,
         "role": contacts.c.role, "channel": channels.c.channel, "priority": 0,
         "due_at": now, "township_code": groups.c.township_code,
         "created_at": groups.c.silent_at},
        lambda q: q.select_from(groups.join(contacts, recipient).join(channels, true())),
    )
    async with store.write() as conn:
        if store.is_postgres:
            # Two gateways' sweeps must not both find a group unalarmed: one at a time.
            await conn.execute(select(func.pg_advisory_xact_lock(
                literal(_ALARM_LOCK, BigInteger))))
        planned = max((await conn.execute(stmt)).rowcount, 0)
    if planned:
        SILENT_COUNTS["alarms"] += planned
        log.warning("silent people: %d alarm messages to the duty officers", planned)
    return planned


#: How far back an alarm looks for groups of silent people left unalarmed by a crash.
CATCH_UP = 3600.0
#: pg_advisory_xact_lock key of the silent alarm ("warngate silent").
_ALARM_LOCK = 0x5761_726E_5369_6C


_REPEATING = (deliveries.c.id, deliveries.c.alert_id, deliveries.c.speaker_id,
              deliveries.c.step, deliveries.c.priority, deliveries.c.created_at,
              deliveries.c.township_code, deliveries.c.village_code)


def _repeat_every(policy: Policy, level: ColumnElement[Any]) -> ColumnElement[Any]:
    whens = [(level == lv, literal(lp.speakers.repeat_every, Float))
             for lv, lp in policy.levels.items() if lp.speakers.repeat_every]
    return case(*whens, else_=literal(None, Float)) if whens else literal(None, Float)


def _repeats(policy: Policy, level: ColumnElement[Any], state: ColumnElement[Any],
             expires: ColumnElement[Any], now: float) -> ColumnElement[bool]:
    """The alert is still sounding on speakers."""
    return and_(state.in_(_LIVE), _repeat_every(policy, level).is_not(None),
                or_(expires.is_(None), expires > now))


async def repeat_speakers(
    store: Store, policy: Policy, *, limit: int = CHUNK, now: float | None = None
) -> int:
    """Sound live warnings again on their speakers at the policy's ``repeat_every``.

    A speaker delivery's ``escalate_at`` is its next repeat; the repeat is a new delivery
    (the next step) carrying the one after. A cancelled, superseded or expired alert stops
    repeating; its cancel sends ``stop``.
    """
    now = time.time() if now is None else now
    # A failed play pulled escalate_at forward: repeat on schedule, not in a loop.
    on_schedule = deliveries.c.created_at + _repeat_every(policy, alerts.c.level)
    later = case((and_(_repeats(policy, alerts.c.level, alerts.c.state, alerts.c.expires, now),
                       on_schedule > now), on_schedule), else_=None)
    added = 0
    while True:
        async with store.write() as conn:
            claim = await _claim(conn, store, now, limit, (deliveries.c.role == "speaker",),
                                 _REPEATING, later)
            d = claim.rows
            every = _repeat_every(policy, d.c.level)
            repeat = insert_rows(
                delivery_rows({
                    "alert_id": d.c.alert_id, "speaker_id": d.c.speaker_id,
                    "role": "speaker", "channel": "speaker", "step": d.c.step + 1,
                    "priority": d.c.priority, "due_at": now, "ack_required": False,
                    "escalate_at": literal(now, Float) + every,
                    "township_code": d.c.township_code, "village_code": d.c.village_code,
                    "created_at": now,
                })
                .select_from(d)
                .where(_repeats(policy, d.c.level, d.c.alert_state, d.c.expires, now),
                       d.c.created_at + every <= now)
                .subquery("repeats")
            )
            claimed, n_added, _ = await _apply(conn, store, claim, repeat, None, now)
            added += n_added
        if claimed < limit:
            break
    return added


async def speaker_fallback(
    store: Store, policy: Policy, speaker_id: str, *, now: float | None = None
) -> int:
    """An offline speaker's village gets its fallback now (e.g. call the village head).

    One fallback delivery per live alert and person, ever: the rows carry
    ``fallback_for_speaker``, which no receipt or failure overwrites, so a flapping speaker
    or a fallback call that failed adds nothing more.
    """
    now = time.time() if now is None else now
    fallback = _table("fallback", [
        {"level": literal(level, String), "role": literal(lp.speakers.fallback_role, String),
         "channel": literal(lp.speakers.fallback_channel, String),
         "priority": literal(priority_of(level, lp.speakers.fallback_role) - 1, Integer)}
        for level, lp in policy.levels.items() if lp.speakers.fallback_role
    ])
    if fallback is None:
        return 0
    async with store.write() as conn:
        q = select(speakers.c.village_code).where(speakers.c.id == speaker_id)
        if store.is_postgres:
            # The status listener and every gateway's sweep may ask at once: holding the
            # speaker's row makes the next one see these rows and add nothing.
            q = q.with_for_update()
        found = (await conn.execute(q)).one_or_none()
        if found is None:
            return 0
        open_alerts = (
            select(deliveries.c.alert_id, alerts.c.level)
            .join(alerts, alerts.c.id == deliveries.c.alert_id)
            .where(
                deliveries.c.speaker_id == speaker_id,
                deliveries.c.kind != "cancel",
                alerts.c.state.in_(_LIVE),
                # A speaker that reported "failed" (amplifier fault) counts too.
                in_states(PENDING | {S.SENT, S.FAILED}),
            )
            .distinct()
            .subquery("open_alerts")
        )
        earlier = deliveries.alias("earlier")
        already = exists().where(
            earlier.c.alert_id == open_alerts.c.alert_id,
            earlier.c.contact_id == contacts.c.id,
            earlier.c.role == fallback.c.role,
            earlier.c.channel == fallback.c.channel,
            # Rows from before the column existed say '?' (migration 0007).
            earlier.c.fallback_for_speaker.is_not(None),
        )
        res = await conn.execute(plan_insert(
            {
                "alert_id": open_alerts.c.alert_id, "contact_id": contacts.c.id,
                "role": fallback.c.role, "channel": fallback.c.channel, "step": 0,
                "priority": fallback.c.priority, "due_at": now, "ack_required": True,
                "township_code": contacts.c.township_code,
                "village_code": contacts.c.village_code, "grid_code": contacts.c.grid_code,
                "created_at": now, "fallback_for_speaker": speaker_id,
            },
            lambda q: q.select_from(
                open_alerts.join(fallback, fallback.c.level == open_alerts.c.level)
                .join(contacts, and_(contacts.c.role == fallback.c.role,
                                     contacts.c.village_code == found.village_code)))
            .where(~already),
        ))
        added = max(res.rowcount, 0)
    if added:
        log.warning("speaker %s offline: %d fallback deliveries", speaker_id, added)
    return added


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
                    state_is(S.FAILED),
                    and_(speakers.c.online.is_(False), in_states(PENDING | {S.SENT})),
                ),
            )
        )
        return [r for r in (await conn.execute(q)).scalars() if r is not None]


async def next_deadline(store: Store) -> float | None:
    """The earliest ``escalate_at`` still waiting (one look at its partial index)."""
    async with store.read() as conn:
        at = (await conn.execute(select(func.min(deliveries.c.escalate_at))
                                 .where(deliveries.c.escalate_at.is_not(None)))).scalar_one()
    return None if at is None else float(at)


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
        await conn.execute(move(Event.EXPIRE, deliveries.c.alert_id.in_(ids),
                                escalate_at=None))
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.alert_id.in_(ids), deliveries.c.escalate_at.is_not(None))
            .values(escalate_at=None))
    return len(ids)

