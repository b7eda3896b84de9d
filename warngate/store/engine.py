"""Engines and migrations."""

from __future__ import annotations

import contextlib
import sqlite3
import weakref
from functools import partial
from pathlib import Path
from threading import Thread
from typing import Any

import aiosqlite
from aiosqlite.context import contextmanager as _aiosqlite_result
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_MIGRATIONS = Path(__file__).parent / "migrations"


def _release(conn: sqlite3.Connection, cursors: weakref.WeakSet[sqlite3.Cursor]) -> None:
    """Close ``conn`` so that it lets go of the database file at once, on its own thread.

    ``sqlite3.Connection.close()`` alone does not: while any of its statements is still held
    by a cursor, SQLite only marks the connection a zombie (``sqlite3_close_v2``), and the
    zombie keeps its open transaction, write lock included, until the last such cursor is
    garbage. A task cancelled inside ``execute`` leaves exactly that: SQLAlchemy takes the
    CancelledError for a lost connection and closes it without a rollback, and the error's
    traceback keeps the cursor alive for as long as anyone keeps the cancelled task or the
    error. Every later write then waited out the 30 s busy timeout.
    So: close every cursor (resetting its statement), roll back, then close.
    """
    for cursor in list(cursors):
        with contextlib.suppress(sqlite3.Error):  # the rollback below runs all the same
            cursor.close()
    with contextlib.suppress(sqlite3.Error):  # so does the close, which rolls back too
        conn.rollback()  # nothing half-written commits, and the write lock is freed now
    conn.close()


class _Connection(aiosqlite.Connection):
    """aiosqlite's connection, whose close and stop always end its transaction first.

    Both queue :func:`_release` on the connection's own thread, behind any statement still
    running there (a cancelled ``execute`` keeps running to its end), so it cannot be
    overtaken, and without awaiting it, so a cancelled caller does not undo it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

    def _new_cursor(self) -> sqlite3.Cursor:
        cursor = self._conn.cursor()
        self._cursors.add(cursor)  # on the connection's thread, as _release reads it there
        return cursor

    @_aiosqlite_result
    async def cursor(self) -> aiosqlite.Cursor:
        # aiosqlite's own cursor(), but the cursor made (and recorded) by _new_cursor.
        raw = await self._execute(self._new_cursor)  # type: ignore[no-untyped-call]
        return aiosqlite.Cursor(self, raw)

    def _queue_release(self) -> None:
        if self._connection is not None and self._running:
            self._tx.put_nowait((None, partial(_release, self._connection, self._cursors)))

    async def close(self) -> None:
        self._queue_release()
        await super().close()

    def stop(self) -> Any:  # SQLAlchemy's terminate, when a graceful close fails
        self._queue_release()
        return super().stop()


async def _connect_sqlite(database: str, **kwargs: Any) -> aiosqlite.Connection:
    """``aiosqlite.connect`` with :class:`_Connection`: SQLAlchemy calls it with the
    arguments it built from the URL and ``connect_args``."""
    conn = _Connection(partial(sqlite3.connect, database, **kwargs), iter_chunk_size=64)
    # A worker thread left behind must not keep the process alive (SQLAlchemy does this
    # for the connections it makes itself).
    thread = conn if isinstance(conn, Thread) else conn._thread
    thread.daemon = True
    return await conn


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(
    url: str, *, echo: bool = False, pool_size: int | None = None, read_only: bool = False
) -> AsyncEngine:
    """Create the engine; for SQLite, create the file's folder and use WAL.

    WAL lets the receipt board read while the dispatcher writes; ``synchronous=NORMAL`` in WAL
    mode still survives a process crash (only an OS crash can lose the last commits).

    ``pool_size`` makes a fixed pool of that many connections (no overflow): the board's
    engine, whose readers must never grow into the connections senders need.
    ``read_only`` makes every session refuse writes, so a GET can never change state.
    """
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {"echo": echo}
    if sqlite:
        db = parsed.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        # ``async_creator_fn`` (what ``create_async_engine(async_creator=)`` sets) receives
        # the filename and the options SQLAlchemy derived from the URL, unlike
        # ``async_creator`` itself.
        kwargs["connect_args"] = {"timeout": 30, "async_creator_fn": _connect_sqlite}
    else:
        kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
    if pool_size is not None:
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=30)
    engine = create_async_engine(url, **kwargs)
    if not sqlite and not read_only:
        return engine

    @event.listens_for(engine.sync_engine, "connect")
    def _session(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if sqlite:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.execute("PRAGMA cache_size=-65536")
            if read_only:
                cur.execute("PRAGMA query_only=ON")
        elif read_only:
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cur.close()
        if not sqlite:
            dbapi_conn.commit()  # the pool rolls back what a new connection began: SET too

    return engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic), on the engine's own connection."""

    def _upgrade(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
