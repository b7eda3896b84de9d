"""The accountability report (通报): per alert or per period, per township and village.

For each village (and each township, summing its villages, and the county) the report says
how fast the warning went out, how many responsible people had to answer (叫应) and how
many answered themselves within their deadline, how many were covered by someone else or
stayed silent, how many escalation steps were taken and how many people ran out of them,
how many households their grid workers followed up and moved, and how many loudspeakers
stayed silent. A second list names the people who did not answer themselves in time.

Every figure comes from three set-based ``GROUP BY`` statements: one pass over the alerts'
deliveries in index order, one over the people who must answer (their rows, the calls
about them and their answers, grouped once), one over follow-ups; Python only adds
villages into townships and the county. A 1,000,000-recipient alert takes about a second
(``bench/report.py``).

Definitions (docs/accountability.md):

* *start*: when the alert was approved (the latest ``approve`` in ``audit_log``), else
  its ``created_at``; *time to first delivery*: the first ``sent_at`` minus the start. For
  a period, the mean over the alerts that reached the area.
* *responsible people*: deliveries with ``ack_required`` that are not a call to someone
  else about them (``on_behalf_of IS NULL``), one person per ``contact_id`` and alert.
* *answered in time*: the person's own earliest answer (``acknowledgements.answered_by =
  'self'``) no later than ``ack.within`` after their first message; ``within`` is the
  policy's for the alert's level and the person's role (a hazard's entry where the level
  names no such role, as escalation reads it), a ``CASE`` over that small table.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    FromClause,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.delivery import WARNING_KINDS
from warngate.phone import mask
from warngate.policy import LEVEL_RANK, AckRule, Policy
from warngate.store import Store
from warngate.store.schema import (
    acknowledgements,
    alerts,
    audit_log,
    contacts,
    deliveries,
    followups,
    regions,
    speakers,
)

#: China Standard Time: report periods are local days, times are shown in local time.
CST = timezone(timedelta(hours=8))
#: Alert statuses that are drills: their report is the same, marked 演练.
DRILL_STATUSES = ("Exercise", "Test")
FORMATS = ("csv", "xlsx")
# Literal, so SQLite can use the partial index on people who must answer.
_ACK_REQUIRED: ColumnElement[bool] = literal_column("ack_required")

#: (key, Chinese header) of every figure, in column order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("first_delivery_s", "首条送达用时(秒)"),
    ("responsible", "责任人数"),
    ("answered", "本人叫应"),
    ("on_time", "按时本人叫应"),
    ("on_time_pct", "按时叫应率(%)"),
    ("covered", "代为确认"),
    ("silent", "未叫应"),
    ("escalations", "升级次数"),
    ("exhausted", "叫应耗尽"),
    ("followups", "跟进户数"),
    ("informed", "当面告知户数"),
    ("evacuated", "已转移户数"),
    ("people_moved", "转移人数"),
    ("refused", "拒绝转移户数"),
    ("not_found", "未找到户数"),
    ("followups_open", "待跟进户数"),
    ("speakers", "喇叭数"),
    ("speakers_silent", "喇叭未播报"),
)
_COUNTS = tuple(k for k, _ in COLUMNS if k not in ("first_delivery_s", "on_time_pct"))
#: Columns of the "未按时叫应人员" list.
PEOPLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("alert_id", "预警编号"),
    ("township", "乡镇"),
    ("village", "村(社区)"),
    ("name", "姓名"),
    ("role", "角色"),
    ("phone", "手机号码"),
    ("status", "情况"),
    ("first_sent", "首条发送时间"),
    ("answered_at", "本人叫应时间"),
    ("seconds", "叫应用时(秒)"),
    ("within", "叫应时限(秒)"),
    ("steps", "升级步数"),
    ("exhausted", "叫应耗尽"),
)
STATUS_LABELS = {"late": "逾期本人叫应", "covered": "代为确认", "silent": "未叫应"}


class ReportError(ValueError):
    """The report cannot be made as asked; the message says why (in Chinese)."""


@dataclass
class ReportRow:
    """One line: the county (``level='county'``), a township or a village."""

    level: str
    township_code: str | None
    township: str | None
    village_code: str | None
    village: str | None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))
    #: (alert, seconds to first delivery) for every alert that reached the area.
    firsts: dict[int, float] = field(default_factory=dict)

    @property
    def first_delivery_s(self) -> float | None:
        if not self.firsts:
            return None
        return round(sum(self.firsts.values()) / len(self.firsts), 1)

    @property
    def on_time_pct(self) -> float | None:
        n = self.counts["responsible"]
        return round(100.0 * self.counts["on_time"] / n, 1) if n else None

    def figures(self) -> dict[str, Any]:
        return {k: (self.first_delivery_s if k == "first_delivery_s" else
                    self.on_time_pct if k == "on_time_pct" else self.counts[k])
                for k, _ in COLUMNS}

    def as_json(self) -> dict[str, Any]:
        return {"level": self.level, "township_code": self.township_code,
                "township": self.township, "village_code": self.village_code,
                "village": self.village, **self.figures()}


@dataclass
class Report:
    alerts: list[dict[str, Any]]
    rows: list[ReportRow]
    township: str | None
    since: float | None = None
    until: float | None = None

    @property
    def drill(self) -> bool:
        """Every alert of the report is a drill (演练)."""
        return bool(self.alerts) and all(a["drill"] for a in self.alerts)

    @property
    def title(self) -> str:
        if self.since is not None and self.until is not None:
            what = f"{_local(self.since)[:10]} 至 {_local(self.until)[:10]} 预警叫应情况通报"
        elif self.alerts:
            a = self.alerts[0]
            what = f"预警 {a['id']}「{a['headline']}」叫应情况通报"
        else:
            what = "预警叫应情况通报"
        if self.drill:
            what += "（演练）"
        elif any(a["drill"] for a in self.alerts):
            what += "（含演练）"
        return what

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "drill": self.drill, "township": self.township,
                "since": self.since, "until": self.until, "alerts": self.alerts,
                "columns": dict(COLUMNS), "rows": [r.as_json() for r in self.rows]}


# -- building -----------------------------------------------------------------------------

def deadlines(policy: Policy) -> dict[tuple[str, str], float]:
    """``ack.within`` per (level, role) of everyone who must answer: the level's entry, or a
    hazard's for a role only a hazard adds (as escalation takes its steps)."""
    out: dict[tuple[str, str], float] = {}
    for level, lp in policy.levels.items():
        roles = dict(lp.roles)
        for hp in policy.hazards.values():
            if LEVEL_RANK[level] >= LEVEL_RANK[hp.min_level]:
                for role, rp in hp.roles.items():
                    roles.setdefault(role, rp)
        out.update({(level, role): float(rp.ack.within)
                    for role, rp in roles.items() if rp.ack.required})
    return out


def _within(policy: Policy, levels: dict[int, str], alert_id: ColumnElement[Any],
            role: ColumnElement[Any]) -> ColumnElement[Any]:
    """The deadline of a person of ``alert_id`` with ``role``, as a ``CASE`` over the
    policy's small (level, role) table: the alerts' levels are known, so no join (to
    ``alerts`` and a constant table) is left for PostgreSQL to misjudge as a few rows and
    plan as loops; a role the policy does not name takes the default."""
    by_level: dict[str, list[int]] = {}
    for a, level in levels.items():
        by_level.setdefault(level, []).append(a)
    default = literal(float(AckRule().within), Float)
    branches = []
    for level, ids in sorted(by_level.items()):
        roles = [(r, w) for (lv, r), w in sorted(deadlines(policy).items()) if lv == level]
        if not roles:
            continue
        in_level = (alert_id == literal(ids[0], BigInteger) if len(ids) == 1 else
                    alert_id.in_([literal(i, BigInteger) for i in ids]))
        branches.append((in_level, case(*((role == literal(r, String), literal(w, Float))
                                          for r, w in roles), else_=default)))
    return case(*branches, else_=default) if branches else default


def _settled() -> ColumnElement[int]:
    """2: answered themselves, 1: covered, 0: silent (as the receipts board counts); a row
    acknowledged before ``acked_how`` existed counts as answered."""
    how, at = deliveries.c.acked_how, deliveries.c.acked_at
    return case((how == "self", 2), (how == "covered", 1),
                (and_(how.is_(None), at.is_not(None)), 2), else_=0)


def _in_scope(ids: Sequence[int], township: str | None, *, alert_index: bool = True
              ) -> list[ColumnElement[bool]]:
    """The alerts' deliveries (of ``township``). ``alert_index=False``: written so that
    SQLite cannot look the alerts up by ``ix_deliveries_alert_township`` (``alert_id + 0``)
    and takes the partial index the other conditions allow instead."""
    alert = deliveries.c.alert_id if alert_index else (
        deliveries.c.alert_id + literal(0, BigInteger))
    where = [alert.in_([literal(i, BigInteger) for i in ids])
             if len(ids) > 1 else alert == literal(ids[0], BigInteger)]
    if township:
        where.append(deliveries.c.township_code == literal(township, String))
    return where


def _people(policy: Policy, levels: dict[int, str], township: str | None, *,
            sqlite: bool) -> FromClause:
    """One row per person who must answer and alert (of ``levels``: alert id → level):
    where they are, when they were first sent to, how they were settled, when they answered
    themselves, whether their escalation ran out, and their deadline.

    Three kinds of rows grouped once, by (alert, person), without joins: the person's own
    deliveries; the calls to others about them that ran out (the mark of a person whose
    escalation ran out is on their last row, which may be the call to their supervisor);
    and their own answers. Joined instead, both databases compared every person with every
    silent row or answer (PostgreSQL, misjudging the grouped rows as a handful, planned
    loops: 4 s for a page of a million-recipient alert's list).

    ``sqlite``: SQLite (without statistics, as most are) would walk the alert's every row,
    a million households, to find the few thousand who must answer, who are all in the
    partial index ``ix_deliveries_ack_contact`` (0.5 s -> 0.07 s for a million); PostgreSQL
    chooses well by itself.
    """
    ids = sorted(levels)
    d, a = deliveries.c, acknowledgements.c
    text_, float_, int_ = (cast(null(), String), cast(null(), Float), cast(null(), Integer))
    own_rows = select(d.alert_id, d.contact_id.label("person"), d.township_code.label("town"),
                      d.village_code.label("village"), d.role, d.sent_at, d.created_at,
                      _settled().label("settled"), d.acked_at, d.step, d.silent_at,
                      float_.label("own_at"))
    own_rows = own_rows.where(
        *_in_scope(ids, township, alert_index=not sqlite), _ACK_REQUIRED,
        d.on_behalf_of.is_(None), d.contact_id.is_not(None), d.kind.in_(WARNING_KINDS))
    # A call about a person carries the person's township and village.
    about = (select(d.alert_id, d.on_behalf_of, text_, text_, text_, float_, float_,
                    literal(0, Integer), float_, int_, d.silent_at, float_)
             .where(*_in_scope(ids, township), d.silent_at.is_not(None),
                    d.on_behalf_of.is_not(None)))
    answers = (select(a.alert_id, a.person_id, text_, text_, text_, float_, float_,
                      literal(0, Integer), float_, int_, float_, a.at)
               .where(a.alert_id.in_([literal(i, BigInteger) for i in ids]),
                      a.answered_by == "self", a.person_id.is_not(None)))
    rows = union_all(own_rows, about, answers).subquery("rows")
    r = rows.c
    s = func.max(r.settled)
    # Rows acknowledged before acknowledgements named their person: their own answer is
    # the row's acked_at.
    answered_at = func.coalesce(func.min(r.own_at), case((s == 2, func.min(r.acked_at))))
    role = func.min(r.role)
    # People known only from an answer or a call about them are no one's concern here
    # (their own rows are in another township); kept out by a condition on the town, not
    # a HAVING, which PostgreSQL took to leave a handful of people.
    return (
        select(r.alert_id, r.person,
               func.coalesce(func.min(r.town), "").label("town"),
               func.coalesce(func.min(r.village), "").label("village"),
               role.label("role"),
               func.coalesce(func.min(r.sent_at), func.min(r.created_at)).label("first_sent"),
               s.label("s"), answered_at.label("answered_at"),
               func.coalesce(func.max(r.step), 0).label("steps"),
               func.max(r.silent_at).label("silent_at"),
               _within(policy, levels, r.alert_id, role).label("within"),
               func.max(r.created_at).label("known"))
        .group_by(r.alert_id, r.person)
        .subquery("people")
    )


def _on_time(p: FromClause) -> ColumnElement[bool]:
    return and_(p.c.s == 2, p.c.answered_at - p.c.first_sent <= p.c.within)


async def _no_jit(conn: AsyncConnection) -> None:
    """PostgreSQL: no JIT compilation in this transaction. The report's statements read a
    million rows once, which makes their estimated cost cross ``jit_above_cost``; compiling
    them took 0.86 s of a 1.8 s report, the reading itself 0.9 s."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET LOCAL jit = off"))


async def _alerts(conn: AsyncConnection, *, alert_id: int | None, since: float | None,
                  until: float | None) -> list[dict[str, Any]]:
    q = select(alerts.c.id, alerts.c.headline, alerts.c.level, alerts.c.event,
               alerts.c.status, alerts.c.state, alerts.c.community_drill, alerts.c.created_at,
               alerts.c.areas).order_by(alerts.c.id)
    if alert_id is not None:
        q = q.where(alerts.c.id == literal(alert_id, BigInteger))
    else:
        assert since is not None and until is not None
        q = q.where(alerts.c.created_at >= literal(since, Float),
                    alerts.c.created_at < literal(until, Float))
    found = (await conn.execute(q)).all()
    approved: dict[int, float] = {}
    ids = [r.id for r in found]
    for i in range(0, len(ids), 900):
        approved.update((await conn.execute(
            select(audit_log.c.alert_id, func.max(audit_log.c.at))
            .where(audit_log.c.action == "approve", audit_log.c.alert_id.in_(ids[i:i + 900]))
            .group_by(audit_log.c.alert_id))).all())
    return [{"id": r.id, "headline": r.headline, "level": r.level, "event": r.event,
             "status": r.status, "state": r.state, "drill": r.status in DRILL_STATUSES,
             "community_drill": bool(r.community_drill), "created_at": r.created_at,
             "started_at": approved.get(r.id, r.created_at), "areas": list(r.areas or [])}
            for r in found]


async def _names(conn: AsyncConnection, codes: Iterable[str]) -> dict[str, str]:
    wanted = sorted({c for c in codes if c})
    out: dict[str, str] = {}
    for i in range(0, len(wanted), 900):
        out.update((await conn.execute(
            select(regions.c.code, regions.c.name)
            .where(regions.c.code.in_(wanted[i:i + 900])))).all())
    return out


async def build_report(
    store: Store, policy: Policy, *, alert_id: int | None = None,
    since: float | None = None, until: float | None = None, township: str | None = None,
) -> Report:
    """The report of one alert, or of every alert created in ``[since, until)``;
    ``township``: that township's deliveries and follow-ups only."""
    if (alert_id is None) == (since is None or until is None):
        raise ReportError("须指定预警编号，或起止时间")
    if since is not None and until is not None and until <= since:
        raise ReportError("结束时间须晚于开始时间")
    async with store.board() as conn:
        await _no_jit(conn)
        found = await _alerts(conn, alert_id=alert_id, since=since, until=until)
        rows: dict[tuple[str, str], ReportRow] = {}
        if found:
            await _aggregate(conn, policy, found, township, rows)
        names = await _names(conn, [c for key in rows for c in key])
    return Report(found, _rollup(rows, names), township, since, until)


async def _aggregate(conn: AsyncConnection, policy: Policy, found: list[dict[str, Any]],
                     township: str | None, rows: dict[tuple[str, str], ReportRow]) -> None:
    ids = [a["id"] for a in found]
    start = {a["id"]: a["started_at"] for a in found}

    def row(town: str | None, village: str | None) -> ReportRow:
        key = (town or "", village or "")
        if key not in rows:
            rows[key] = ReportRow("village", key[0] or None, None, key[1] or None, None)
        return rows[key]

    # 1. Every delivery, once, in the order of ix_deliveries_alert_township (alert,
    # township, village: no sort): first message out, escalation steps (a speaker's repeats
    # are not), loudspeakers and the silent ones among them: their first message failed,
    # or the speaker is offline now.
    town, village = deliveries.c.township_code, deliveries.c.village_code
    speaker = deliveries.c.speaker_id
    first_play = and_(speaker.is_not(None), deliveries.c.step == 0)
    offline = (select(speakers.c.id)
               .where(speakers.c.id == speaker, speakers.c.online.is_(False)).exists())
    for r in await conn.execute(
        select(deliveries.c.alert_id, town, village, func.min(deliveries.c.sent_at),
               func.sum(case((and_(deliveries.c.step > 0, speaker.is_(None)), 1), else_=0)),
               func.sum(case((first_play, 1), else_=0)),
               # CASE looks the speaker up for a speaker's rows only, not a household's.
               func.sum(case((first_play, case((or_(deliveries.c.state == "failed", offline),
                                                 1), else_=0)), else_=0)))
        .where(*_in_scope(ids, township), deliveries.c.kind.in_(WARNING_KINDS))
        .group_by(deliveries.c.alert_id, town, village)
    ):
        target = row(r[1], r[2])
        if r[3] is not None:
            target.firsts[r[0]] = max(float(r[3]) - start[r[0]], 0.0)
        target.counts["escalations"] += int(r[4] or 0)
        target.counts["speakers"] += int(r[5] or 0)
        target.counts["speakers_silent"] += int(r[6] or 0)

    # 2. People who must answer, one per alert: answered, in time, covered, silent.
    p = _people(policy, {a["id"]: a["level"] for a in found}, township,
                sqlite=conn.dialect.name == "sqlite")
    for r in await conn.execute(
        select(p.c.town, p.c.village, func.count(),
               func.sum(case((p.c.s == 2, 1), else_=0)),
               func.sum(case((_on_time(p), 1), else_=0)),
               func.sum(case((p.c.s == 1, 1), else_=0)),
               func.sum(case((p.c.s == 0, 1), else_=0)),
               func.sum(case((p.c.silent_at.is_not(None), 1), else_=0)))
        .where(p.c.known.is_not(None))
        .group_by(p.c.town, p.c.village)
    ):
        c = row(r[0], r[1]).counts
        for k, v in zip(("responsible", "answered", "on_time", "covered", "silent",
                         "exhausted"), r[2:], strict=True):
            c[k] += int(v or 0)

    # 3. Households followed up by their grid workers, and what became of them.
    outcome = followups.c.outcome
    f_ids = [literal(i, BigInteger) for i in ids]
    fq = (select(followups.c.township_code, followups.c.village_code, func.count(),
                 *(func.sum(case((outcome == o, 1), else_=0))
                   for o in ("informed", "evacuated", "refused", "not_found")),
                 func.sum(case((outcome.is_(None), 1), else_=0)),
                 func.sum(case((outcome == "evacuated",
                                func.coalesce(followups.c.people_moved, 0)), else_=0)))
          .where(followups.c.alert_id.in_(f_ids))
          .group_by(followups.c.township_code, followups.c.village_code))
    if township:
        fq = fq.where(followups.c.township_code == literal(township, String))
    for r in await conn.execute(fq):
        c = row(r[0], r[1]).counts
        for k, v in zip(("followups", "informed", "evacuated", "refused", "not_found",
                         "followups_open", "people_moved"), r[2:], strict=True):
            c[k] += int(v or 0)


def _rollup(villages: dict[tuple[str, str], ReportRow], names: dict[str, str]
            ) -> list[ReportRow]:
    """County first, then each township followed by its villages, in code order."""
    county = ReportRow("county", None, "全县合计", None, None)
    towns: dict[str, ReportRow] = {}
    out: list[ReportRow] = []
    for (town, village), r in sorted(villages.items()):
        t = towns.get(town)
        if t is None:
            t = towns[town] = ReportRow("township", town or None,
                                        names.get(town, town or "（未划入乡镇）"), None, None)
        r.township = t.township
        r.village = names.get(village, village) if village else "（乡镇本级）"
        for target in (t, county):
            for k, v in r.counts.items():
                target.counts[k] += v
            # An area's first message is its earliest village's, per alert.
            for a, s in r.firsts.items():
                target.firsts[a] = min(target.firsts.get(a, s), s)
    out.append(county)
    by_town: dict[str, list[ReportRow]] = {}
    for (town, _v), r in sorted(villages.items()):
        by_town.setdefault(town, []).append(r)
    for town, t in towns.items():
        out.append(t)
        out.extend(by_town[town])
    return out


# -- the people who did not answer themselves in time --------------------------------------

#: Keyset of the people list: (alert, township code, village code, person).
PeopleCursor = tuple[int, str, str, int]


def _late_query(policy: Policy, levels: dict[int, str], township: str | None, *,
                sqlite: bool) -> Select[Any]:
    """Everyone of the alerts who did not answer themselves in time, with name, phone and
    place names, in list order (alert, township, village, person)."""
    p = _people(policy, levels, township, sqlite=sqlite)
    village = regions.alias("village")
    town = regions.alias("town")
    return (select(p.c.alert_id, p.c.person, p.c.town, p.c.village, p.c.role, p.c.first_sent,
                   p.c.s, p.c.answered_at, p.c.within, p.c.steps, p.c.silent_at,
                   contacts.c.name, contacts.c.phone, village.c.name.label("village_name"),
                   town.c.name.label("town_name"))
            .join_from(p, contacts, contacts.c.id == p.c.person)
            .outerjoin(village, village.c.code == p.c.village)
            .outerjoin(town, town.c.code == p.c.town)
            .where(p.c.known.is_not(None), ~_on_time(p))
            .order_by(p.c.alert_id, p.c.town, p.c.village, p.c.person))


def _late_person(policy: Policy, r: Any) -> dict[str, Any]:
    status = "late" if r.s == 2 else "covered" if r.s == 1 else "silent"
    seconds = (None if r.answered_at is None or r.first_sent is None
               else round(float(r.answered_at) - float(r.first_sent), 1))
    return {
        "alert_id": r.alert_id, "person_id": r.person, "township_code": r.town or None,
        "township": r.town_name or r.town or None, "village_code": r.village or None,
        "village": r.village_name or r.village or None, "name": r.name,
        "role": r.role, "role_label": policy.role_label(r.role),
        # Reports leave the system: numbers are masked like in the logs.
        "phone": mask(r.phone) if r.phone else None,
        "status": status, "status_label": STATUS_LABELS[status],
        "first_sent": r.first_sent,
        "answered_at": r.answered_at if r.s == 2 else None,
        "seconds": seconds if r.s == 2 else None, "within": float(r.within),
        "steps": int(r.steps or 0), "exhausted": r.silent_at is not None,
    }


async def _levels(conn: AsyncConnection, alert_ids: Sequence[int]) -> dict[int, str]:
    return dict((await conn.execute(
        select(alerts.c.id, alerts.c.level)
        .where(alerts.c.id.in_([literal(i, BigInteger) for i in alert_ids])))).all())


async def late_people(
    store: Store, policy: Policy, alert_ids: Sequence[int], *, township: str | None = None,
    limit: int = 200, after: PeopleCursor | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` people of ``alert_ids`` who did not answer themselves within their
    deadline (late, covered or silent), ordered by alert, township, village and person,
    after the keyset ``after`` (:func:`people_cursor` of the last row of a page)."""
    if not alert_ids:
        return []
    async with store.board() as conn:
        await _no_jit(conn)
        levels = await _levels(conn, alert_ids)
        if not levels:
            return []
        q = _late_query(policy, levels, township, sqlite=not store.is_postgres).limit(limit)
        if after is not None:
            inner = q.selected_columns
            q = q.where(tuple_(inner.alert_id, inner.town, inner.village, inner.person) > tuple_(
                literal(after[0], BigInteger), literal(after[1], String),
                literal(after[2], String), literal(after[3], BigInteger)))
        found = (await conn.execute(q)).all()
    return [_late_person(policy, r) for r in found]


def people_cursor(person: dict[str, Any]) -> PeopleCursor:
    return (int(person["alert_id"]), person["township_code"] or "",
            person["village_code"] or "", int(person["person_id"]))


def parse_cursor(raw: str) -> PeopleCursor:
    """``alert:township:village:person`` as :func:`format_cursor` wrote it."""
    parts = raw.split(":")
    if len(parts) != 4:
        raise ReportError("after 须为上一页的 next_after")
    try:
        alert_id, person = int(parts[0]), int(parts[3])
    except ValueError:
        raise ReportError("after 须为上一页的 next_after") from None
    if not (0 < alert_id < 2**63 and 0 < person < 2**63):
        raise ReportError("after 须为上一页的 next_after")
    return alert_id, parts[1], parts[2], person


def format_cursor(cursor: PeopleCursor) -> str:
    return ":".join(map(str, cursor))


async def all_late_people(store: Store, policy: Policy, report: Report
                          ) -> AsyncIterator[dict[str, Any]]:
    """Every person of the report's list, streamed from one query (server-side cursor):
    exports keep the list whole without holding it in memory, and without computing the
    people again for every page."""
    ids = [a["id"] for a in report.alerts]
    if not ids:
        return
    async with store.board() as conn:
        await _no_jit(conn)
        levels = await _levels(conn, ids)
        q = _late_query(policy, levels, report.township, sqlite=not store.is_postgres)
        result = await conn.stream(q.execution_options(yield_per=2000))
        async for part in result.partitions():
            for r in part:
                yield _late_person(policy, r)


# -- files ----------------------------------------------------------------------------------

def _local(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, CST).strftime("%Y-%m-%d %H:%M:%S")


def parse_day(text: str) -> float:
    """``2026-12-01`` (a local day's start, China Standard Time) or an ISO 8601 time with
    its offset, as epoch seconds."""
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=CST).timestamp()
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"时间 {text!r} 须为 2026-12-01 或带时区的 ISO 8601 时间") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=CST)
    return at.timestamp()


_AREA_HEADERS = ("层级", "乡镇", "村(社区)")
_LEVEL_LABELS = {"county": "全县", "township": "乡镇", "village": "村(社区)"}


def _summary_lines(report: Report) -> Iterable[list[Any]]:
    yield [*_AREA_HEADERS, *(h for _, h in COLUMNS)]
    for r in report.rows:
        figures = r.figures()
        yield [_LEVEL_LABELS[r.level], r.township or "", r.village or "",
               *("" if figures[k] is None else figures[k] for k, _ in COLUMNS)]


def _alert_lines(report: Report) -> Iterable[list[Any]]:
    yield ["预警编号", "标题", "级别", "灾种", "状态", "演练", "发布时间", "开始计时"]
    for a in report.alerts:
        yield [a["id"], a["headline"], a["level"], a["event"], a["state"],
               "演练" if a["drill"] else "", _local(a["created_at"]), _local(a["started_at"])]


def _person_line(p: dict[str, Any]) -> list[Any]:
    values = {**p, "township": p["township"] or "", "village": p["village"] or "",
              "role": p["role_label"], "phone": p["phone"] or "（无手机）",
              "status": p["status_label"], "first_sent": _local(p["first_sent"]),
              "answered_at": _local(p["answered_at"]),
              "seconds": "" if p["seconds"] is None else p["seconds"],
              "exhausted": "是" if p["exhausted"] else ""}
    return [values[k] for k, _ in PEOPLE_COLUMNS]


def _csv_head(report: Report) -> Iterable[list[Any]]:
    """The CSV's lines before the people: each section under a title line."""
    yield [report.title]
    yield from _summary_lines(report)
    yield []
    yield ["预警"]
    yield from _alert_lines(report)
    yield []
    yield ["未按时叫应人员"]
    yield [h for _, h in PEOPLE_COLUMNS]


async def write_csv(store: Store, policy: Policy, report: Report, out: IO[str]) -> int:
    """The report as CSV sections (a title line each): 通报, 预警, 未按时叫应人员.
    Returns how many people the list holds."""
    w = csv.writer(out)
    w.writerows(_csv_head(report))
    n = 0
    async for person in all_late_people(store, policy, report):
        w.writerow(_person_line(person))
        n += 1
    return n


async def csv_chunks(store: Store, policy: Policy, report: Report, *, every: int = 1000
                     ) -> AsyncIterator[bytes]:
    """The CSV file (UTF-8 with a BOM, so spreadsheet programs read the Chinese as UTF-8)
    in pieces of ``every`` people, for an HTTP answer that streams a long list."""
    buf = io.StringIO()
    buf.write("\ufeff")
    w = csv.writer(buf)
    w.writerows(_csv_head(report))
    n = 0
    async for person in all_late_people(store, policy, report):
        w.writerow(_person_line(person))
        n += 1
        if n % every == 0:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode("utf-8")


async def write_xlsx(store: Store, policy: Policy, report: Report, out: Path | IO[bytes]
                     ) -> int:
    """The report as a workbook: 通报, 预警 and 未按时叫应人员 sheets (write-only: the
    people list streams to the file). Returns how many people the list holds."""
    from openpyxl import Workbook  # only exports pay for openpyxl's import

    wb = Workbook(write_only=True)
    summary = wb.create_sheet("通报")
    summary.append([report.title])
    for line in _summary_lines(report):
        summary.append(line)
    sheet = wb.create_sheet("预警")
    for line in _alert_lines(report):
        sheet.append(line)
    people = wb.create_sheet("未按时叫应人员")
    people.append([h for _, h in PEOPLE_COLUMNS])
    n = 0
    async for person in all_late_people(store, policy, report):
        people.append(_person_line(person))
        n += 1
    wb.save(out)
    return n


async def export(store: Store, policy: Policy, report: Report, fmt: str) -> bytes:
    """The report file's bytes in ``fmt`` (csv, or xlsx)."""
    if fmt == "csv":
        return b"".join([chunk async for chunk in csv_chunks(store, policy, report)])
    if fmt == "xlsx":
        data = io.BytesIO()
        await write_xlsx(store, policy, report, data)
        return data.getvalue()
    raise ReportError(f"format 须为 {'/'.join(FORMATS)} 之一")


def file_name(report: Report, fmt: str) -> str:
    if report.since is not None and report.until is not None:
        stem = f"通报_{_local(report.since)[:10]}_{_local(report.until)[:10]}"
    else:
        stem = f"通报_预警{report.alerts[0]['id']}" if report.alerts else "通报"
    if report.township:
        stem += f"_{report.township}"
    if report.drill:
        stem += "_演练"
    return f"{stem}.{fmt}"


__all__ = [
    "COLUMNS", "FORMATS", "PEOPLE_COLUMNS", "Report", "ReportError", "ReportRow",
    "all_late_people", "build_report", "csv_chunks", "export", "file_name", "format_cursor",
    "late_people", "parse_cursor", "parse_day", "people_cursor", "write_csv", "write_xlsx",
]
