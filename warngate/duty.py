"""24-hour duty (值班): who is on duty for a township or the county, and when.

A shift (``duty_shifts``) names a region (township or county code), a contact and a time
span. Shifts change who is asked first, never who is told: every duty officer of the
region still receives the warning, but

* the one on shift now goes first (:func:`duty_priority`, for planning), and
* a ``to: duty`` escalation step of a person who does not answer calls the region's other
  duty officers, those not on shift now (:func:`colleague_of`, used by
  ``warngate.escalation``), or the person's supervisor when there are none.

A handover ends the running shift now and starts the successor's until the old shift's
end; who handed over and what they said are kept on the new shift and in ``audit_log``.
Everything here is set-based SQL: the expressions are joined into the statements that plan
and escalate deliveries, never looked up per person.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    FromClause,
    Integer,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.phone import mask
from warngate.store import Store
from warngate.store.schema import audit_log, contacts, duty_shifts, regions

#: The roles that stand duty: a shift's contact has one of them, and a ``to: duty`` step
#: calls the region's others.
DUTY_ROLES: tuple[str, ...] = ("township_duty", "county_duty")
#: China Standard Time: shift times written without an offset are local times.
CST = timezone(timedelta(hours=8))


def _at(now: float | ColumnElement[Any]) -> ColumnElement[Any]:
    return now if isinstance(now, ColumnElement) else literal(now, Float)


def on_shift(contact_id: ColumnElement[Any], now: float | ColumnElement[Any]
             ) -> ColumnElement[bool]:
    """SQL: the contact ``contact_id`` names is on a shift running at ``now``."""
    at = _at(now)
    return exists().where(duty_shifts.c.contact_id == contact_id,
                          duty_shifts.c.starts_at <= at, duty_shifts.c.ends_at > at)


def colleague_of(colleague: FromClause, person: FromClause, now: float
                 ) -> ColumnElement[bool]:
    """SQL join condition: ``colleague`` (an alias of ``contacts``) is another active duty
    officer of ``person``'s region who is not on shift at ``now``."""
    return and_(colleague.c.region_code == person.c.region_code,
                colleague.c.role.in_(DUTY_ROLES), colleague.c.active.is_(True),
                colleague.c.id != person.c.id, ~on_shift(colleague.c.id, now))


def first_colleague(person: FromClause, now: float) -> ColumnElement[Any]:
    """SQL scalar: the lowest id among ``person``'s :func:`colleague_of` (correlated)."""
    other = contacts.alias("first_colleague")
    return (select(func.min(other.c.id)).where(colleague_of(other, person, now))
            .scalar_subquery())


def duty_priority(base: int | ColumnElement[Any], contact_id: ColumnElement[Any],
                  role: ColumnElement[Any], now: float) -> ColumnElement[Any]:
    """SQL: a planned delivery's priority, one better for a duty officer on shift now.

    For planning (``warngate.planning._contact_rows``): ``"priority":
    duty_priority(priority_of(level, role), contacts.c.id, contacts.c.role, now)`` puts the
    officer on shift ahead of every other duty officer of the same level (priorities are
    ``level * 10 + role``; duty roles are 0, so on shift is one less).
    """
    b = literal(base, Integer) if isinstance(base, int) else base
    return case((and_(role.in_(DUTY_ROLES), on_shift(contact_id, now)), b - 1), else_=b)


# -- shifts -----------------------------------------------------------------------------------

class DutyError(ValueError):
    """A shift or handover that cannot be recorded; the message says why, in Chinese."""


@dataclass(frozen=True, slots=True)
class Shift:
    region_code: str
    external_id: str
    starts_at: float
    ends_at: float


def parse_time(value: str) -> float:
    """ISO 8601 (``2026-07-01T08:00``, ``2026-07-01 08:00+08:00``) → epoch seconds; without
    an offset the time is China Standard Time."""
    text = value.strip()
    try:
        dt = datetime.fromisoformat(text.replace("/", "-"))
    except ValueError:
        raise DutyError(f"时间格式无法识别：{value!r}（应为 ISO 8601，如 2026-07-01T08:00）"
                        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=CST)
    return dt.timestamp()


def iso(at: float) -> str:
    """Epoch seconds as China Standard Time, to the second."""
    return datetime.fromtimestamp(at, CST).isoformat(timespec="seconds")


async def _contact_ids(conn: AsyncConnection, external_ids: Iterable[str]
                       ) -> dict[str, tuple[int, str, str]]:
    wanted = sorted(set(external_ids))
    found: dict[str, tuple[int, str, str]] = {}
    for i in range(0, len(wanted), 900):
        for r in await conn.execute(
            select(contacts.c.external_id, contacts.c.id, contacts.c.role,
                   contacts.c.region_code)
            .where(contacts.c.external_id.in_(wanted[i : i + 900]))
        ):
            found[r.external_id] = (r.id, r.role, r.region_code)
    return found


async def add_shifts(store: Store, shifts: Sequence[Shift], *, actor: str) -> int:
    """Record shifts (all or none); return how many. Refused with the reasons of every bad
    row: unknown region or contact, a contact who is not a duty officer of that region,
    an end not after the start."""
    if not shifts:
        return 0
    now = time.time()
    async with store.write() as conn:
        people = await _contact_ids(conn, (s.external_id for s in shifts))
        codes = sorted({s.region_code for s in shifts})
        known = set((await conn.execute(
            select(regions.c.code).where(regions.c.code.in_(codes)))).scalars())
        problems: list[str] = []
        rows: list[dict[str, Any]] = []
        for n, s in enumerate(shifts, start=1):
            who = people.get(s.external_id)
            if s.region_code not in known:
                problems.append(f"第{n}行：区域编码 {s.region_code} 不存在")
            elif who is None:
                problems.append(f"第{n}行：值班人 {s.external_id} 不在名册中")
            elif who[1] not in DUTY_ROLES or who[2] != s.region_code:
                problems.append(f"第{n}行：{s.external_id} 不是 {s.region_code} 的值班人员"
                                f"（角色 {who[1]}，区域 {who[2]}）")
            elif s.ends_at <= s.starts_at:
                problems.append(f"第{n}行：结束时间须晚于开始时间")
            else:
                rows.append({"region_code": s.region_code, "contact_id": who[0],
                             "starts_at": s.starts_at, "ends_at": s.ends_at,
                             "created_at": now})
        if problems:
            raise DutyError("；".join(problems))
        await conn.execute(insert(duty_shifts), rows)
        await conn.execute(insert(audit_log), [{
            "at": now, "actor": actor, "action": "duty_add",
            "detail": {"shifts": len(rows), "regions": codes}}])
    return len(rows)


#: CSV headers, Chinese or English, → Shift fields.
_HEADERS = {
    "区域编码": "region_code", "区域代码": "region_code", "region_code": "region_code",
    "region": "region_code",
    "值班人": "external_id", "外部编号": "external_id", "值班人编号": "external_id",
    "external_id": "external_id", "contact": "external_id",
    "开始": "starts_at", "开始时间": "starts_at", "starts_at": "starts_at", "from": "starts_at",
    "结束": "ends_at", "结束时间": "ends_at", "ends_at": "ends_at", "to": "ends_at",
}


def read_csv(data: bytes) -> list[Shift]:
    """Shifts from a CSV file (UTF-8 with or without BOM, else GB18030), headers in Chinese
    or English: 区域编码/region_code, 值班人/外部编号/external_id, 开始/starts_at,
    结束/ends_at."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("gb18030")
    reader = csv.reader(io.StringIO(text))
    header: dict[str, int] | None = None
    shifts: list[Shift] = []
    for n, raw in enumerate(reader, start=1):
        cells = [c.strip() for c in raw]
        if not any(cells):
            continue
        if header is None:
            mapped = {_HEADERS.get(c.lower(), _HEADERS.get(c, "")): i
                      for i, c in enumerate(cells)}
            mapped.pop("", None)
            if {"region_code", "external_id", "starts_at", "ends_at"} <= mapped.keys():
                header = mapped
            continue  # a title row above the header
        try:
            shifts.append(Shift(region_code=cells[header["region_code"]],
                                external_id=cells[header["external_id"]],
                                starts_at=parse_time(cells[header["starts_at"]]),
                                ends_at=parse_time(cells[header["ends_at"]])))
        except IndexError:
            raise DutyError(f"第{n}行：列数不足") from None
        except DutyError as exc:
            raise DutyError(f"第{n}行：{exc}") from None
    if header is None:
        raise DutyError("未找到表头：需要 区域编码、值班人、开始、结束 四列"
                        "（或 region_code, external_id, starts_at, ends_at）")
    return shifts


async def on_duty(conn: AsyncConnection, *, region: str | None = None,
                  now: float | None = None) -> list[dict[str, Any]]:
    """The shifts running at ``now`` (of ``region`` and the regions inside it, or all),
    with the officer's name and masked phone, by region."""
    at = time.time() if now is None else now
    region_row = regions.alias("region")
    q = (
        select(duty_shifts.c.id, duty_shifts.c.region_code, region_row.c.name.label("region"),
               duty_shifts.c.starts_at, duty_shifts.c.ends_at, duty_shifts.c.handed_over_by,
               duty_shifts.c.handover_note, contacts.c.external_id, contacts.c.name,
               contacts.c.role, contacts.c.phone)
        .select_from(duty_shifts.join(contacts, contacts.c.id == duty_shifts.c.contact_id)
                     .outerjoin(region_row, region_row.c.code == duty_shifts.c.region_code))
        .where(duty_shifts.c.starts_at <= at, duty_shifts.c.ends_at > at)
        .order_by(duty_shifts.c.region_code, duty_shifts.c.starts_at, duty_shifts.c.id)
    )
    if region:
        # A county's code also lists its townships' shifts.
        q = q.where(duty_shifts.c.region_code.startswith(region, autoescape=True))
    return [
        {"shift_id": r.id, "region_code": r.region_code, "region": r.region,
         "external_id": r.external_id, "name": r.name, "role": r.role,
         "phone": mask(r.phone) if r.phone else None, "starts_at": r.starts_at,
         "ends_at": r.ends_at, "starts": iso(r.starts_at), "ends": iso(r.ends_at),
         "handed_over_by": r.handed_over_by, "handover_note": r.handover_note}
        for r in await conn.execute(q)
    ]


async def handover(store: Store, *, region: str, to: str, note: str, by: str,
                   now: float | None = None, until: float | None = None) -> int:
    """``by`` hands the region's duty to contact ``to`` now: running shifts end now and the
    successor's shift runs to their end (or ``until``, or 24 hours without either). Returns
    the new shift's id; an ``audit_log`` row keeps who, to whom and the note."""
    at = time.time() if now is None else now
    if not by.strip():
        raise DutyError("须写明交班人（--by）")
    async with store.write() as conn:
        who = (await _contact_ids(conn, [to])).get(to)
        if who is None:
            raise DutyError(f"接班人 {to} 不在名册中")
        if who[1] not in DUTY_ROLES or who[2] != region:
            raise DutyError(f"{to} 不是 {region} 的值班人员（角色 {who[1]}，区域 {who[2]}）")
        running = duty_shifts.c.region_code == region
        running = and_(running, duty_shifts.c.starts_at <= at, duty_shifts.c.ends_at > at)
        end = (await conn.execute(select(func.max(duty_shifts.c.ends_at)).where(running))
               ).scalar_one()
        ends_at = until if until is not None else (end if end is not None else at + 86400.0)
        if ends_at <= at:
            raise DutyError("接班结束时间须晚于现在")
        before = list((await conn.execute(
            select(duty_shifts.c.id, duty_shifts.c.contact_id).where(running))).all())
        await conn.execute(update(duty_shifts).where(running).values(ends_at=at))
        new_id = (await conn.execute(insert(duty_shifts).values(
            region_code=region, contact_id=who[0], starts_at=at, ends_at=ends_at,
            handed_over_by=by.strip()[:100], handover_note=note, created_at=at,
        ).returning(duty_shifts.c.id))).scalar_one()
        await conn.execute(insert(audit_log), [{
            "at": at, "actor": by.strip()[:100], "action": "duty_handover",
            "detail": {"region": region, "to": to, "to_contact_id": who[0],
                       "note": note, "ended_shifts": [r.id for r in before],
                       "shift_id": new_id, "ends_at": ends_at}}])
    return int(new_id)
