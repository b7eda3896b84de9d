"""The handle every component uses to reach the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warngate.store.engine import make_engine, migrate


class Store:
    """An engine plus the rule for writing to it.

    SQLite has one writer at a time; letting its busy handler arbitrate between our own
    coroutines wastes time in sleeps, so in-process writers queue on an asyncio lock instead.
    PostgreSQL writers run concurrently (row locks, ``SKIP LOCKED``).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        self._write_lock: asyncio.Lock | None = None if self.is_postgres else asyncio.Lock()

    @classmethod
    async def open(cls, url: str, *, echo: bool = False, upgrade: bool = True) -> Store:
        store = cls(make_engine(url, echo=echo))
        if upgrade:
            await migrate(store.engine)
        return store

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits on success and rolls back on error."""
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    def sql(self, statement: str) -> str:
        """Driver SQL written with ``?`` placeholders, in this driver's parameter style.

        Hot paths (thousands of rows a second) use ``exec_driver_sql`` with plain tuples:
        SQLAlchemy's per-row parameter processing costs more than SQLite's own work there.
        """
        if not self.is_postgres:
            return statement
        parts = statement.split("?")
        return "".join(p + (f"${i}" if i < len(parts) else "")
                       for i, p in enumerate(parts, start=1))

    async def close(self) -> None:
        await self.engine.dispose()
