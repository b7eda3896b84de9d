"""A writer cancelled half way through its transaction (shutdown, a timeout, a lost client)
leaves the database as it found it: the next write goes through at once, the cancelled
writer gets its CancelledError promptly, and none of its rows commit."""

from __future__ import annotations

import asyncio
import random
import time

from sqlalchemy import Integer, String, bindparam, func, insert, select

from warngate.store import Store
from warngate.store.schema import feed_entries

ROUNDS = 200
ROWS_PER_WRITE = 5
#: Far above a write's real cost, far below SQLite's 30 s busy timeout that a write
#: waited out when a cancelled transaction had kept the file locked.
BOUND = 5.0

_ROW = insert(feed_entries).values(
    feed=bindparam("feed", type_=String), entry_key=bindparam("key", type_=String),
    url=None, outcome="written", at=0.0)
_COUNT = select(func.count()).select_from(feed_entries)


async def _writer(store: Store, round_: int) -> None:
    """Reads, then writes ``ROWS_PER_WRITE`` rows in one transaction, reading between them:
    a cancel lands before, inside or between statements, in a read or in a write."""
    for batch in range(1_000_000):
        async with store.read() as conn:
            await conn.execute(_COUNT)
        async with store.write() as conn:
            for row in range(ROWS_PER_WRITE):
                await conn.execute(_COUNT)
                await conn.execute(_ROW, {"feed": f"w{round_}-{batch}", "key": f"{row}"})


async def test_a_cancelled_write_leaves_the_database_writable(store: Store) -> None:
    rng = random.Random(9)
    cancelled: list[asyncio.Task[None]] = []
    for round_ in range(ROUNDS):
        task = asyncio.create_task(_writer(store, round_), name=f"writer-{round_}")
        await asyncio.sleep(rng.uniform(0, 0.01))
        started = time.perf_counter()
        task.cancel()
        await asyncio.wait([task], timeout=BOUND)
        assert task.cancelled(), f"round {round_}: the writer was not cancelled within {BOUND} s"
        # Kept, as a supervisor keeps the tasks it cancelled: the CancelledError's traceback
        # then keeps the writer's cursors alive, which once kept SQLite's write lock.
        cancelled.append(task)
        assert time.perf_counter() - started < BOUND

        started = time.perf_counter()
        async with asyncio.timeout(BOUND):
            async with store.write() as conn:
                await conn.execute(_ROW, {"feed": "after", "key": f"{round_}"})
        assert time.perf_counter() - started < BOUND, f"round {round_}: the next write waited"

    async with store.read() as conn:
        per_write = (await conn.execute(
            select(feed_entries.c.feed, func.count().cast(Integer))
            .where(feed_entries.c.feed != "after").group_by(feed_entries.c.feed))).all()
        after = (await conn.execute(select(func.count()).select_from(feed_entries)
                                    .where(feed_entries.c.feed == "after"))).scalar_one()
    assert after == ROUNDS
    half_written = {feed: n for feed, n in per_write if n != ROWS_PER_WRITE}
    assert not half_written, f"writes committed in part: {half_written}"
