"""A throwaway database for one benchmark run: a SQLite file in a temporary folder, or a
PostgreSQL database created for the run and dropped after it.

PostgreSQL is reached through ``WARNGATE_TEST_PG`` (an admin URL, as for the tests), by
default the machine's own server on 127.0.0.1:5432.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

PG_ADMIN = os.environ.get("WARNGATE_TEST_PG",
                          "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")


@asynccontextmanager
async def throwaway_database(backend: str) -> AsyncIterator[str]:
    """Yield the URL of an empty database on ``backend`` (sqlite or postgres)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/bench.db"
        return
    name = f"warngate_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
