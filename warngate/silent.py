"""Who has not answered: people, not deliveries.

A person who must answer (叫应) may have several deliveries for one alert: the first
message, a call to themselves, a call to their supervisor on their behalf (``on_behalf_of``),
calls to the other duty officers. Lists of the unanswered are lists of those *people*: one
row each, whatever number of rows escalation added for them.

Also the lookups the lanes use to say, in an escalation message, whom it is about.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Float, and_, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.messages import Person
from warngate.phone import mask
from warngate.store import Store
from warngate.store.schema import contacts, deliveries, regions


def _person() -> Any:
    return func.coalesce(deliveries.c.on_behalf_of, deliveries.c.contact_id)


async def silent_people(
    store: Store, alert_id: int, *, township: str | None = None,
    only_exhausted: bool = False, limit: int = 1000, after_id: int = 0,
) -> list[dict[str, Any]]:
    """The people of ``alert_id`` who had to answer and nobody has answered for (neither
    they nor anyone on their behalf), one row per person, ordered by person id.

    Each row: ``id``, ``external_id``, ``name``, ``role``, ``village_code``, ``village``
    (name), ``phone`` (masked), ``first_message_at``, ``steps`` (escalation steps taken),
    ``last_channel`` (of the latest step), ``silent_at`` (when their escalation ran out;
    None while steps remain). ``only_exhausted``: only those whose escalation ran out.
    Paged by ``after_id`` (the last id of the previous page).
    """
    person = _person().label("person_id")
    rows = (
        select(
            person,
            deliveries.c.channel,
            deliveries.c.step,
            func.row_number().over(partition_by=person,
                                   order_by=(deliveries.c.step.desc(),
                                             deliveries.c.id.desc())).label("rn"),
            func.min(deliveries.c.created_at).over(partition_by=person).label("first_at"),
            func.max(deliveries.c.acked_at).over(partition_by=person).label("acked_at"),
            func.max(deliveries.c.silent_at).over(partition_by=person).label("silent_at"),
        )
        .where(deliveries.c.alert_id == alert_id, deliveries.c.ack_required.is_(True),
               deliveries.c.contact_id.is_not(None),
               deliveries.c.kind.in_(("alert", "update")),
               # A village head's call for an offline speaker is about the speaker.
               deliveries.c.fallback_for_speaker.is_(None))
    )
    if township:
        rows = rows.where(deliveries.c.township_code == township)
    per = rows.subquery("per_row")
    village = regions.alias("village")
    q = (
        select(per.c.person_id, per.c.first_at, per.c.step, per.c.channel, per.c.silent_at,
               contacts.c.external_id, contacts.c.name, contacts.c.role, contacts.c.phone,
               contacts.c.village_code, village.c.name.label("village"))
        .join(contacts, contacts.c.id == per.c.person_id)
        .outerjoin(village, village.c.code == contacts.c.village_code)
        .where(per.c.rn == 1, per.c.acked_at.is_(None), per.c.person_id > after_id)
        .order_by(per.c.person_id).limit(limit)
    )
    if only_exhausted:
        q = q.where(per.c.silent_at.is_not(None))
    async with store.read() as conn:
        found = (await conn.execute(q)).all()
    return [{"id": r.person_id, "external_id": r.external_id, "name": r.name,
             "role": r.role, "village_code": r.village_code, "village": r.village,
             "phone": mask(r.phone), "first_message_at": r.first_at, "steps": r.step,
             "last_channel": r.channel, "silent_at": r.silent_at} for r in found]


def _ref(r: Any) -> Person:
    return Person(name=r.name, role=r.role, village=r.village)


async def people(conn: AsyncConnection, ids: Iterable[int]) -> dict[int, Person]:
    """Name, role and village of each of ``ids`` (one query per 900)."""
    wanted = sorted(set(ids))
    village = regions.alias("village")
    out: dict[int, Person] = {}
    for i in range(0, len(wanted), 900):
        for r in await conn.execute(
            select(contacts.c.id, contacts.c.name, contacts.c.role,
                   village.c.name.label("village"))
            .outerjoin(village, village.c.code == contacts.c.village_code)
            .where(contacts.c.id.in_(wanted[i:i + 900]))
        ):
            out[r.id] = _ref(r)
    return out


SilentKey = tuple[int, str | None, float]


async def silent_lists(conn: AsyncConnection, keys: Sequence[SilentKey]
                       ) -> dict[SilentKey, list[Person]]:
    """For duty officers' alarms, each keyed (alert, township, sweep time): the people whose
    escalation ran out in that sweep, by village and name."""
    out: dict[SilentKey, list[Person]] = {k: [] for k in keys}
    if not keys:
        return out
    village = regions.alias("village")
    q = (
        select(deliveries.c.alert_id, deliveries.c.township_code, deliveries.c.silent_at,
               contacts.c.id, contacts.c.name, contacts.c.role, contacts.c.village_code,
               village.c.name.label("village"))
        .distinct()
        .join(contacts, contacts.c.id == _person())
        .outerjoin(village, village.c.code == contacts.c.village_code)
        .where(deliveries.c.silent_at.is_not(None), or_(*(
            and_(deliveries.c.alert_id == a, deliveries.c.township_code == t,
                 deliveries.c.silent_at == literal(at, Float))
            for a, t, at in keys)))
        .order_by(contacts.c.village_code, contacts.c.name, contacts.c.id)
    )
    for r in await conn.execute(q):
        found = out.get((r.alert_id, r.township_code, r.silent_at))
        if found is not None:
            found.append(_ref(r))
    return out
