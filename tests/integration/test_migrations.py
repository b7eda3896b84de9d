"""The Alembic migrations build exactly the schema the code declares, on both backends."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from warngate.store import Store
from warngate.store.engine import alembic_config
from warngate.store.schema import metadata


def test_one_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"migrations branch: heads {heads}"


async def test_migrated_schema_matches_the_tables(store: Store) -> None:
    def diff(conn: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))

    async with store.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []
