"""Throwaway databases for tests and benchmarks: a SQLite file in a temporary folder, or a
PostgreSQL database created for the occasion and dropped after it.

PostgreSQL is reached through ``WARNGATE_TEST_PG`` (an admin URL), by default the machine's
own server on 127.0.0.1:5432.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

PG_ADMIN_URL = os.environ.get(
    "WARNGATE_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


async def pg_available() -> bool:
    engine = create_async_engine(PG_ADMIN_URL)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
        return True
    except Exception:
        return False
    finally:
        await engine.dispose()


@asynccontextmanager
async def throwaway_database(backend: str) -> AsyncIterator[str]:
    """Yield the URL of an empty database on ``backend`` (sqlite or postgres)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/warngate.db"
        return
    name = f"warngate_t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
