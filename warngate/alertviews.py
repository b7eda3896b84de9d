"""Reading alerts for the API: one alert, and the list a page at a time (keyset paging).

The handlers in ``warngate.web`` call these and never the tables. Reads go through the
store's board pool, so readers never take the senders' connections. Comparisons are with
columns, so every parameter is bound with the column's type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from warngate import board
from warngate.store import Store
from warngate.store.schema import alerts, contacts


@dataclass(frozen=True, slots=True)
class AlertPage:
    rows: list[Any]
    #: The ``after`` cursor of the next page: the last id of this one, when more follow.
    next_after: int | None


async def alert_page(store: Store, *, state: str | None, after: int | None, limit: int,
                     visible: Callable[[Any], bool]) -> AlertPage:
    """Up to ``limit`` alerts newest first, older than ``after``, that ``visible`` lets through.

    Keyset paging on the id: a page costs the same however deep it is, and alerts arriving
    meanwhile neither shift nor repeat what follows. Visibility (a township's scope) is a
    test on the areas list, so rows are read in batches until the page is full.
    """
    found: list[Any] = []
    cursor = after
    async with store.board() as conn:
        while len(found) <= limit:
            q = select(*board.ALERT_COLUMNS).order_by(alerts.c.id.desc()).limit(limit + 1)
            if state:
                q = q.where(alerts.c.state == state)
            if cursor is not None:
                q = q.where(alerts.c.id < cursor)
            batch = (await conn.execute(q)).all()
            found.extend(r for r in batch if visible(r))
            if len(batch) <= limit:
                break
            cursor = batch[-1].id
    more = len(found) > limit
    page = found[:limit]
    return AlertPage(page, page[-1].id if more and page else None)


async def find_alert(store: Store, alert_id: int) -> Any | None:
    """One alert (without its raw source), or None."""
    async with store.board() as conn:
        return (await conn.execute(
            select(*board.ALERT_COLUMNS).where(alerts.c.id == alert_id)
        )).one_or_none()


async def find_contact(store: Store, person: int | str) -> int | None:
    """A person's contact id, from their id (a JSON number) or their roster id (text)."""
    if isinstance(person, int):
        if not 0 < person < 2**63:
            return None
        where = contacts.c.id == person
    else:
        where = contacts.c.external_id == person
    async with store.read() as conn:
        found = (await conn.execute(select(contacts.c.id).where(where))).scalar_one_or_none()
    return None if found is None else int(found)


async def database_state(store: Store) -> str:
    """``ok``, or what went wrong reaching the database (for the health check)."""
    try:
        async with store.read() as conn:
            await conn.execute(select(1))
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"
