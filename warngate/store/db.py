"""The handle every component uses to reach the database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, TypeVar, cast

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warngate.store.engine import make_engine, migrate

T = TypeVar("T")

#: Connections (and concurrent queries) for receipt boards and API reads, by default.
BOARD_POOL_SIZE = 4
#: How long one board answer serves every reader who asks for it, at least.
SHARE_FOR = 1.0
#: ... and at least this many times as long as counting it took: when the database is
#: busy sending, a board's count slows down, and counting it again at once would take
#: the database from the senders (a board then shows counts a few seconds older). At 9,
#: counting boards takes at most a tenth of one database connection's time.
SHARE_PER_COST = 9.0


class Store:
    """An engine plus the rule for writing to it, and a second, small engine for boards.

    SQLite has one writer at a time; letting its busy handler arbitrate between our own
    coroutines wastes time in sleeps, so in-process writers queue on an asyncio lock instead.
    PostgreSQL writers run concurrently (row locks, ``SKIP LOCKED``).

    Receipt boards, the alert API and metrics read through :meth:`board`: their own pool of
    ``board_pool_size`` connections, so however many people watch a board, the dispatcher,
    planner and escalation (on :meth:`read` / :meth:`write`) always find a connection.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        board_engine: AsyncEngine | None = None,
        board_pool_size: int = BOARD_POOL_SIZE,
        share_for: float = SHARE_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if board_pool_size < 1:
            raise ValueError(f"board_pool_size must be at least 1, not {board_pool_size}")
        self.engine = engine
        self.board_engine = board_engine if board_engine is not None else engine
        self.is_postgres = engine.dialect.name == "postgresql"
        self._write_lock: asyncio.Lock | None = None if self.is_postgres else asyncio.Lock()
        # Waiting here rather than in the pool keeps readers in arrival order and spares
        # them the pool's timeout when a crowd opens boards at once.
        self._board_slots = asyncio.Semaphore(board_pool_size)
        self._share_for = share_for
        self._clock = clock
        self._answers: dict[Hashable, tuple[float, Any]] = {}  # key: (fresh until, answer)
        self._pending: dict[Hashable, asyncio.Future[Any]] = {}

    @classmethod
    async def open(
        cls, url: str, *, echo: bool = False, upgrade: bool = True,
        board_pool_size: int = BOARD_POOL_SIZE,
    ) -> Store:
        engine = make_engine(url, echo=echo)
        database = make_url(url).database
        if engine.dialect.name == "sqlite" and (not database or database == ":memory:"):
            board_engine = None  # a second engine would open a second, empty database
        else:
            board_engine = make_engine(url, echo=echo, pool_size=board_pool_size,
                                       read_only=True)
        store = cls(engine, board_engine=board_engine, board_pool_size=board_pool_size)
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

    @contextlib.asynccontextmanager
    async def board(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection for boards and API reads, from their own small pool."""
        async with self._board_slots, self.board_engine.connect() as conn:
            yield conn

    async def shared(
        self, key: Hashable, query: Callable[[AsyncConnection], Awaitable[T]]
    ) -> T:
        """``query``'s answer for ``key``: one query at a time on the board pool, and none
        within ``share_for`` (or ``SHARE_PER_COST`` times what it cost) of the last answer.

        A hundred open boards then cost what one does: callers within ``share_for`` of the
        last answer get it as it is, and callers arriving while it is being computed wait
        for that same query instead of starting their own. The answer is shared, so callers
        must not change it.
        """
        while True:
            hit = self._answers.get(key)
            if hit is not None and self._clock() < hit[0]:
                return cast(T, hit[1])
            pending = self._pending.get(key)
            if pending is None:
                break
            try:
                return cast(T, await asyncio.shield(pending))
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled, not the query it waited for
                # The caller running the query went away; one of its waiters takes over.
        pending = asyncio.get_running_loop().create_future()
        self._pending[key] = pending
        try:
            async with self.board() as conn:
                started = self._clock()
                answer = await query(conn)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # waiters re-raise it; none waiting is no reason to warn
            raise
        finally:
            del self._pending[key]
        # Aged from when it arrived, not when it was asked: a board that takes longer than
        # ``share_for`` to count still leaves the database idle between two counts.
        now = self._clock()
        self._keep(key, now + max(self._share_for, SHARE_PER_COST * (now - started)), answer)
        pending.set_result(answer)
        return answer

    def forget_shared(self) -> None:
        """Drop every shared answer: the next reader counts afresh (tests, after a change
        that must show at once)."""
        self._answers.clear()

    def _keep(self, key: Hashable, fresh_until: float, answer: Any) -> None:
        if len(self._answers) >= 256:  # boards of past alerts: drop what has gone stale
            now = self._clock()
            for old in [k for k, (t, _) in self._answers.items() if now >= t]:
                del self._answers[old]
        self._answers[key] = (fresh_until, answer)

    async def close(self) -> None:
        try:
            if self.board_engine is not self.engine:
                await self.board_engine.dispose()
        finally:
            await self.engine.dispose()
