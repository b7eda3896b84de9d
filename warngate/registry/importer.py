"""Writing checked rosters to the store: one transaction, bulk statements, upserts by key."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from warngate.phone import mask
from warngate.registry.issues import Issue, RegistryError
from warngate.registry.kinds import RoleNames
from warngate.registry.reading import read_files
from warngate.registry.validation import (
    Counts,
    Existing,
    Plan,
    References,
    StoredContact,
    StoredRegion,
    references,
    validate,
)
from warngate.store.schema import audit_log, contacts, regions, speakers

#: Keys per ``IN (...)`` lookup: well under SQLite's and asyncpg's parameter limits.
_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Summary:
    """What an import wrote (new rows and updated ones alike), what it took off the roster
    (``--replace``), and what a person should look at (a phone two people share)."""

    counts: Counts
    warnings: tuple[Issue, ...] = ()
    deactivated: int = 0

    def __str__(self) -> str:
        lines = [f"imported {self.counts.describe()}"]
        if self.deactivated:
            lines.append(f"{self.deactivated:,} contacts no longer on their township's "
                         "roster: inactive, no longer warned")
        if self.warnings:
            n = len(self.warnings)
            lines.append(f"{n} warning{'s' if n != 1 else ''} (imported all the same):")
            lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


async def import_files(engine: AsyncEngine, paths: Sequence[Path], *,
                       roles: RoleNames | None = None, replace: bool = False,
                       actor: str = "registry") -> Summary:
    """Check ``paths`` against each other and the database, then write them, all or nothing.

    Rows are upserted by key (regions by code, contacts by external_id, speakers by id), so
    importing the same files again changes nothing. References may point into any of the
    files, in any order, or to rows already stored.

    Args:
        roles: the roles contacts may have (the policy's declared roles); defaults if None.
        replace: the files are the whole roster of each township they hold contacts of
            (and of each county, for county-level contacts): stored contacts of those
            places that the files leave out become inactive and are no longer planned.
        actor: who imports, for the audit log.

    Raises:
        RegistryError: any problem in any file; nothing was written.
    """
    # Parsing and checking are pure Python and take a second for a county: off the loop.
    rosters = await asyncio.to_thread(read_files, paths)
    refs = references(rosters)
    async with engine.begin() as conn:
        existing = await load_existing(conn, refs)
        plan = await asyncio.to_thread(validate, rosters, existing, roles)
        if plan.issues:
            raise RegistryError(plan.issues)
        warnings = plan.warnings + await _shared_with_stored(conn, plan)
        await write(conn, plan)
        deactivated = await _deactivate_missing(conn, plan) if replace else 0
        await conn.execute(insert(audit_log).values(
            at=time.time(), actor=actor, action="registry_import", alert_id=None,
            detail={"files": [str(p) for p in paths], "contacts": len(plan.contacts),
                    "replace": replace, "deactivated": deactivated,
                    "warnings": len(warnings)}))
    return Summary(plan.counts, tuple(warnings), deactivated)


def _not_among(conn: AsyncConnection, ids: list[str]) -> ColumnElement[bool]:
    """``contacts.external_id`` is none of ``ids``, given as one typed parameter whatever
    their number: ``<> ALL(array)`` on PostgreSQL, a JSON list read by ``json_each`` on
    SQLite (no parameter limit either way)."""
    if conn.dialect.name == "postgresql":
        return contacts.c.external_id != func.all_(
            bindparam("ids", ids, type_=postgresql.ARRAY(String)))
    listed = func.json_each(bindparam("ids", json.dumps(ids), type_=String)
                            ).table_valued("value")
    return contacts.c.external_id.not_in(select(listed.c.value))


async def _shared_with_stored(conn: AsyncConnection, plan: Plan) -> list[Issue]:
    """Phones of the files already held by a stored, active contact the files leave as is."""
    where = {c["phone"]: c["external_id"] for c in plan.contacts if c["phone"]}
    if not where:
        return []
    mine = [c["external_id"] for c in plan.contacts]
    found: list[Issue] = []
    for chunk in _chunks(set(where)):
        rows = await conn.execute(
            select(contacts.c.phone, contacts.c.external_id, contacts.c.name)
            .where(contacts.c.phone.in_(chunk), contacts.c.active.is_(True),
                   _not_among(conn, mine))
            .order_by(contacts.c.phone, contacts.c.external_id))
        for r in rows:
            found.append(Issue("(database)", None, "phone",
                               f"{mask(r.phone)} of {where[r.phone]!r} is also the phone of "
                               f"{r.external_id!r} ({r.name}), already registered"))
    return found


async def _deactivate_missing(conn: AsyncConnection, plan: Plan) -> int:
    """Contacts of the townships (and, for county-level people, counties) the files hold
    contacts of, which the files leave out: off the roster, never planned again."""
    townships = sorted({c["township_code"] for c in plan.contacts if c["township_code"]})
    counties = sorted({c["region_code"] for c in plan.contacts if not c["township_code"]})
    if not (townships or counties):
        return 0
    place = or_(contacts.c.township_code.in_(townships),
                and_(contacts.c.township_code.is_(None), contacts.c.region_code.in_(counties)))
    res = await conn.execute(
        update(contacts).where(place, contacts.c.active.is_(True),
                               _not_among(conn, [c["external_id"] for c in plan.contacts]))
        .values(active=False))
    return max(res.rowcount, 0)


def _chunks(keys: set[str] | frozenset[str]) -> Iterator[list[str]]:
    ordered = sorted(keys)
    for i in range(0, len(ordered), _CHUNK):
        yield ordered[i:i + _CHUNK]


async def load_existing(conn: AsyncConnection, refs: References) -> Existing:
    """The stored rows the files refer to, and the supervisor chains above them."""
    existing = Existing(in_database=True)
    cols = (regions.c.code, regions.c.level, regions.c.township_code, regions.c.village_code)
    for chunk in _chunks(refs.region_codes):
        for r in await conn.execute(select(*cols).where(regions.c.code.in_(chunk))):
            existing.regions[r.code] = StoredRegion(r.level, r.township_code, r.village_code)

    boss = contacts.alias("boss")
    query = select(contacts.c.external_id, contacts.c.role, boss.c.external_id.label("sup")
                   ).select_from(contacts.outerjoin(boss, contacts.c.supervisor_id == boss.c.id))
    wanted = set(refs.contact_ids) | (refs.supervisor_targets - refs.relinked)
    asked: set[str] = set()
    while wanted:
        for chunk in _chunks(wanted):
            for found in await conn.execute(query.where(contacts.c.external_id.in_(chunk))):
                existing.contacts[found.external_id] = StoredContact(found.role, found.sup)
        asked |= wanted
        # Climb the stored chains above the supervisors the files name (loops).
        wanted = {s.supervisor for s in existing.contacts.values() if s.supervisor} - asked
        wanted -= refs.relinked
    return existing


def _upsert(conn: AsyncConnection, table: Table, key: str, rows: list[dict[str, Any]]
            ) -> tuple[Insert, Any]:
    """INSERT … ON CONFLICT (key) DO UPDATE, skipping rows that would not change.

    Returns the statement and its parameters. On PostgreSQL the rows travel as one array per
    column (``unnest``): one statement instead of a round trip per row, ten times faster.
    """
    columns = list(rows[0])
    if conn.dialect.name == "postgresql":
        arrays = select(*(
            func.unnest(bindparam(f"a_{c}", type_=postgresql.ARRAY(table.c[c].type))).label(c)
            for c in columns))
        stmt: Any = postgresql.insert(table).from_select(columns, arrays)
        params: Any = {f"a_{c}": [r[c] for r in rows] for c in columns}
    elif conn.dialect.name == "sqlite":
        stmt, params = sqlite.insert(table), rows
    else:
        raise NotImplementedError(f"registry import on {conn.dialect.name}")
    changed = [c for c in columns if c != key]
    upsert: Insert = stmt.on_conflict_do_update(
        index_elements=[table.c[key]],
        set_={c: stmt.excluded[c] for c in changed},
        where=or_(*(table.c[c].is_distinct_from(stmt.excluded[c]) for c in changed)),
    )
    return upsert, params


async def _link(conn: AsyncConnection, column: str, links: list[dict[str, str]]) -> None:
    """Set ``column`` (supervisor_id, responsible_id) of each ``b_ext`` to ``b_target``'s id."""
    other = contacts.alias("other")
    if conn.dialect.name == "postgresql":
        pairs = select(
            func.unnest(bindparam("a_ext", type_=postgresql.ARRAY(String))).label("ext"),
            func.unnest(bindparam("a_target", type_=postgresql.ARRAY(String))).label("target"),
        ).subquery("links")
        await conn.execute(
            update(contacts).values({column: other.c.id})
            .where(contacts.c.external_id == pairs.c.ext, other.c.external_id == pairs.c.target,
                   # A row rewritten for nothing costs six index updates: skip unchanged ones.
                   contacts.c[column].is_distinct_from(other.c.id)),
            {"a_ext": [lk["b_ext"] for lk in links],
             "a_target": [lk["b_target"] for lk in links]},
        )
        return
    target = select(other.c.id).where(other.c.external_id == bindparam("b_target"))
    await conn.execute(
        update(contacts).where(contacts.c.external_id == bindparam("b_ext"),
                               contacts.c[column].is_distinct_from(target.scalar_subquery()))
        .values({column: target.scalar_subquery()}),
        links,
    )


async def write(conn: AsyncConnection, plan: Plan) -> None:
    """Write a checked plan: each statement covers all its rows at once."""
    for table, key, rows in ((regions, "code", plan.regions),
                             (contacts, "external_id", plan.contacts),
                             (speakers, "id", plan.speakers)):
        if rows:
            await conn.execute(*_upsert(conn, table, key, rows))
    if plan.supervisor_links:
        await _link(conn, "supervisor_id", plan.supervisor_links)
    if plan.bindings:
        await _link(conn, "responsible_id", plan.bindings)
