"""Receipt boards: who has been reached and who has answered, by township → village → grid.

Deliveries carry their township/village/grid codes, so a board is one grouped, indexed query
over one alert's rows, whatever the size of the registry. Handlers ask for
:func:`receipts_snapshot` and :func:`progress_snapshot`: each board is counted at most once a
second, on the store's board pool, however many people have it open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    and_,
    case,
    func,
    literal,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.delivery import WARNING_KINDS
from warngate.phone import mask
from warngate.store import Store
from warngate.store.schema import acknowledgements, alerts, contacts, deliveries, regions

#: ``?state=`` values beyond the delivery states: views the duty office asks for.
VIEWS = ("unacknowledged", "escalated", "answered", "covered", "silent")


def _add(counts: dict[str, dict[str, int]], channel: str, state: str, n: int) -> None:
    per = counts.setdefault(channel, {})
    per[state] = per.get(state, 0) + n


async def receipts_board(
    conn: AsyncConnection, alert_id: int, *, township: str | None = None
) -> dict[str, Any]:
    """Counts by township → village → grid, each as channel × state, plus totals."""
    q = (
        select(
            deliveries.c.township_code, deliveries.c.village_code, deliveries.c.grid_code,
            deliveries.c.channel, deliveries.c.state, func.count(),
        )
        .where(deliveries.c.alert_id == alert_id, deliveries.c.kind.in_(WARNING_KINDS))
        .group_by(deliveries.c.township_code, deliveries.c.village_code,
                  deliveries.c.grid_code, deliveries.c.channel, deliveries.c.state)
    )
    if township:
        q = q.where(deliveries.c.township_code == township)
    rows = (await conn.execute(q)).all()
    extra = await answer_counts(conn, alert_id, township)
    codes = {c for r in rows for c in (r[0], r[1], r[2]) if c}
    names = await _names(conn, codes)
    totals: dict[str, dict[str, int]] = {}
    towns: dict[str, dict[str, Any]] = {}
    for t, v, g, channel, state, n in rows:
        _add(totals, channel, state, n)
        tnode = towns.setdefault(t or "-", {"code": t, "name": names.get(t or ""), "counts": {},
                                            "villages": {}})
        _add(tnode["counts"], channel, state, n)
        vnode = tnode["villages"].setdefault(v or "-", {"code": v, "name": names.get(v or ""),
                                                        "counts": {}, "grids": {}})
        _add(vnode["counts"], channel, state, n)
        if g:
            gnode = vnode["grids"].setdefault(g, {"code": g, "name": names.get(g),
                                                  "counts": {}})
            _add(gnode["counts"], channel, state, n)
    return {
        "alert_id": alert_id,
        "generated_at": time.time(),
        "totals": totals,
        "acknowledgement": extra,
        "townships": [
            {**tn, "villages": [
                {**vn, "grids": sorted(vn["grids"].values(), key=lambda x: x["code"])}
                for vn in sorted(tn["villages"].values(), key=lambda x: x["code"] or "")
            ]}
            for tn in sorted(towns.values(), key=lambda x: x["code"] or "")
        ],
    }


async def receipts_snapshot(
    store: Store, alert_id: int, *, township: str | None = None
) -> dict[str, Any]:
    """:func:`receipts_board`, shared by every reader of the same board for a second."""
    return await store.shared(
        ("receipts", alert_id, township),
        lambda conn: receipts_board(conn, alert_id, township=township),
    )


async def receipts_json(
    store: Store, alert_id: int, *, township: str | None = None
) -> bytes:
    """:func:`receipts_snapshot` as the API's JSON body, encoded once for every reader.

    Encoding a county's board costs milliseconds; a hundred open tabs would otherwise
    spend them again for every poll, on the loop the dispatcher shares.
    """
    return await store.shared(
        ("receipts.json", alert_id, township),
        lambda conn: _encoded(receipts_board(conn, alert_id, township=township)),
    )


async def _encoded(answer: Awaitable[dict[str, Any]]) -> bytes:
    return json.dumps(await answer, ensure_ascii=False).encode()


def _settled(how: Any, at: Any) -> Any:
    """2: answered themselves, 1: covered by someone else, 0: silent (per delivery row).
    A row acknowledged before ``acked_how`` existed counts as answered."""
    return case((how == "self", 2), (how == "covered", 1),
                (and_(how.is_(None), at.is_not(None)), 2), else_=0)


def _responsible(alert_id: int, township: str | None) -> list[ColumnElement[bool]]:
    """The rows of the people who must answer (not the supervisors called about them)."""
    where = [deliveries.c.alert_id == alert_id, deliveries.c.kind.in_(WARNING_KINDS),
             deliveries.c.ack_required.is_(True), deliveries.c.on_behalf_of.is_(None),
             deliveries.c.contact_id.is_not(None)]
    if township:
        where.append(deliveries.c.township_code == township)
    return where


async def answer_counts(
    conn: AsyncConnection, alert_id: int, township: str | None
) -> dict[str, int]:
    """People who must answer: how many answered themselves, how many were covered by
    someone else (a supervisor, staff, their grid worker), how many are silent; and how
    many escalation steps were taken."""
    people = (
        select(func.max(_settled(deliveries.c.acked_how, deliveries.c.acked_at)).label("s"))
        .where(*_responsible(alert_id, township))
        .group_by(deliveries.c.contact_id)
        .subquery("people")
    )
    required, answered, covered = (await conn.execute(select(
        func.count(),
        func.coalesce(func.sum(case((people.c.s == 2, 1), else_=0)), 0),
        func.coalesce(func.sum(case((people.c.s == 1, 1), else_=0)), 0),
    ).select_from(people))).one()
    escalated = (await conn.execute(
        select(func.count()).select_from(deliveries)
        .where(deliveries.c.alert_id == alert_id, deliveries.c.step > 0,
               *( [deliveries.c.township_code == township] if township else []))
    )).scalar_one()
    silent = max(int(required) - int(answered) - int(covered), 0)
    return {"required": int(required), "answered": int(answered), "covered": int(covered),
            "silent": silent,
            # Before answered/covered were told apart: kept for existing clients.
            "acknowledged": int(answered) + int(covered), "waiting": silent,
            "escalation_steps": int(escalated)}


#: ``?state=`` views that list people (one row each), not deliveries.
PEOPLE_VIEWS = {"answered": 2, "covered": 1, "silent": 0}


async def responsible_people(
    conn: AsyncConnection, alert_id: int, *, view: str, township: str | None = None,
    limit: int = 200, after: tuple[str, str, int] | None = None,
) -> list[dict[str, Any]]:
    """The people who must answer and who ``view`` (answered / covered / silent), one row
    per person with how and when they were settled and how long it took; ordered by
    township, village, person (keyset paging with ``after``, as :func:`people_cursor`)."""
    settled = func.max(_settled(deliveries.c.acked_how, deliveries.c.acked_at))
    town = func.coalesce(func.min(deliveries.c.township_code), "")
    village = func.coalesce(func.min(deliveries.c.village_code), "")
    per = (
        select(
            deliveries.c.contact_id.label("person"), town.label("town"),
            village.label("village"), func.min(deliveries.c.grid_code).label("grid"),
            func.min(deliveries.c.role).label("role"),
            func.min(deliveries.c.sent_at).label("first_sent"),
            func.min(deliveries.c.created_at).label("first_planned"),
            func.max(deliveries.c.step).label("steps"),
            func.min(deliveries.c.acked_at).label("settled_at"),
        )
        .where(*_responsible(alert_id, township))
        .group_by(deliveries.c.contact_id)
        .having(settled == PEOPLE_VIEWS[view])
        .subquery("per")
    )
    q = (
        select(per, contacts.c.name, contacts.c.phone)
        .join_from(per, contacts, contacts.c.id == per.c.person)
        .order_by(per.c.town, per.c.village, per.c.person)
        .limit(limit)
    )
    if after is not None:
        q = q.where(tuple_(per.c.town, per.c.village, per.c.person)
                    > tuple_(literal(after[0], String), literal(after[1], String),
                             literal(after[2], BigInteger)))
    rows = (await conn.execute(q)).all()
    answers: dict[int, list[dict[str, Any]]] = {}
    ids = [r.person for r in rows]
    for i in range(0, len(ids), 900):
        for a in await conn.execute(
            select(acknowledgements.c.person_id, acknowledgements.c.answered_by,
                   acknowledgements.c.via, acknowledgements.c.actor, acknowledgements.c.note,
                   acknowledgements.c.at)
            .where(acknowledgements.c.alert_id == alert_id,
                   acknowledgements.c.person_id.in_(ids[i : i + 900]))
            .order_by(acknowledgements.c.at)
        ):
            answers.setdefault(a.person_id, []).append({
                "by": a.answered_by, "via": a.via, "actor": a.actor, "note": a.note,
                "at": a.at})
    out = []
    for r in rows:
        mine = answers.get(r.person, [])
        own = next((a["at"] for a in mine if a["by"] == "self"), None)
        start = r.first_sent if r.first_sent is not None else r.first_planned
        out.append({
            "person_id": r.person, "name": r.name,
            "phone": mask(r.phone) if r.phone else None, "role": r.role,
            "township": r.town or None, "village": r.village or None, "grid": r.grid,
            "status": view, "first_sent_at": r.first_sent, "settled_at": r.settled_at,
            "answered_at": own,
            "seconds_to_answer": None if own is None or start is None else own - start,
            "escalation_steps": r.steps, "answers": mine,
        })
    return out


async def _names(conn: AsyncConnection, codes: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    code_list = sorted(codes)
    for i in range(0, len(code_list), 900):
        part = code_list[i : i + 900]
        for code, name in await conn.execute(
            select(regions.c.code, regions.c.name).where(regions.c.code.in_(part))
        ):
            out[code] = name
    return out


async def receipts_people(
    conn: AsyncConnection,
    alert_id: int,
    *,
    township: str | None,
    state: str | None,
    limit: int = 200,
    offset: int = 0,
    after: tuple[str, str, int] | None = None,
) -> list[dict[str, Any]]:
    """The people (and speakers) in one state, with masked numbers, newest step last.

    Ordered by township, village (a missing code first on both backends), delivery id;
    ``after`` is the :func:`people_cursor` of the last row of the previous page (keyset
    paging, which ``offset`` is kept beside for older clients).
    """
    town = func.coalesce(deliveries.c.township_code, "")
    village = func.coalesce(deliveries.c.village_code, "")
    q = (
        select(
            deliveries.c.id, deliveries.c.contact_id, deliveries.c.speaker_id,
            deliveries.c.role, deliveries.c.channel, deliveries.c.state, deliveries.c.step,
            deliveries.c.township_code, deliveries.c.village_code, deliveries.c.grid_code,
            deliveries.c.sent_at, deliveries.c.delivered_at, deliveries.c.acked_at,
            deliveries.c.last_error, deliveries.c.on_behalf_of,
            contacts.c.name, contacts.c.phone,
        )
        .select_from(deliveries.outerjoin(contacts, contacts.c.id == deliveries.c.contact_id))
        .where(deliveries.c.alert_id == alert_id, deliveries.c.kind.in_(WARNING_KINDS))
        .order_by(town, village, deliveries.c.id)
        .limit(limit)
        .offset(offset)
    )
    if after is not None:
        q = q.where(tuple_(town, village, deliveries.c.id)
                    > tuple_(literal(after[0], String), literal(after[1], String),
                             literal(after[2], BigInteger)))
    if township:
        q = q.where(deliveries.c.township_code == township)
    if state == "unacknowledged":
        q = q.where(deliveries.c.ack_required.is_(True), deliveries.c.acked_at.is_(None))
    elif state == "escalated":
        q = q.where(deliveries.c.step > 0, deliveries.c.role != "speaker")
    elif state:
        q = q.where(deliveries.c.state == state)
    return [
        {
            "delivery_id": r.id, "name": r.name or r.speaker_id, "phone": mask(r.phone)
            if r.phone else None, "speaker_id": r.speaker_id, "role": r.role,
            "channel": r.channel, "state": r.state, "step": r.step,
            "township": r.township_code, "village": r.village_code, "grid": r.grid_code,
            "sent_at": r.sent_at, "delivered_at": r.delivered_at, "acked_at": r.acked_at,
            "error": r.last_error, "on_behalf_of": r.on_behalf_of,
        }
        for r in await conn.execute(q)
    ]


def people_cursor(person: dict[str, Any]) -> tuple[str, str, int]:
    """Where a page of :func:`receipts_people` ending with ``person`` stops."""
    key = person["person_id"] if "person_id" in person else person["delivery_id"]
    return (person["township"] or "", person["village"] or "", int(key))


async def alert_progress(conn: AsyncConnection, alert_id: int) -> dict[str, dict[str, int]]:
    """Channel × state counts for one alert (all kinds), for the alert view and the demo."""
    counts: dict[str, dict[str, int]] = {}
    for channel, state, n in await conn.execute(
        select(deliveries.c.channel, deliveries.c.state, func.count())
        .where(deliveries.c.alert_id == alert_id)
        .group_by(deliveries.c.channel, deliveries.c.state)
    ):
        _add(counts, channel, state, n)
    return counts


async def progress_snapshot(store: Store, alert_id: int) -> dict[str, dict[str, int]]:
    """:func:`alert_progress`, shared by every reader of the same alert for a second."""
    return await store.shared(("progress", alert_id), lambda conn: alert_progress(conn, alert_id))


def alert_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "source": row.source, "sender": row.sender,
        "identifier": row.identifier, "sent": row.sent, "msg_type": row.msg_type,
        "status": row.status, "level": row.level, "event": row.event,
        "headline": row.headline, "description": row.description,
        "instruction": row.instruction, "areas": row.areas, "expires": row.expires,
        "state": row.state, "created_by": row.created_by, "approved_by": row.approved_by,
        "cancelled_by": row.cancelled_by, "created_at": row.created_at,
        "planned": row.planned_count, "no_recipients": row.no_recipients,
        "supersedes": row.supersedes_id, "warnings": row.warnings or [],
    }


ALERT_COLUMNS = [c for c in alerts.c if c.name not in ("raw", "raw_bytes")]
