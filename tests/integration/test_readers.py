"""Readers never starve senders: however many people watch a receipt board, the database counts
it about once a second, and the dispatcher's connections stay free for sending."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.integration.test_api import RED, Api, api_settings
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.store import Store
from warngate.store.db import BOARD_POOL_SIZE, SHARE_FOR
from warngate.web.app import build_app

READERS = 50


@contextmanager
def board_counts_seen() -> Iterator[list[str]]:
    """Every receipt-board count any engine in this process sends to the database."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "GROUP BY deliveries.township_code" in statement:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", note)


async def test_fifty_open_boards_are_counted_once_a_second(store: Store) -> None:
    await write_small_county(store)
    url = store.engine.url.render_as_string(hide_password=False)
    async with TestClient(TestServer(build_app(api_settings(url), policy()))) as client:
        api = Api(client, url)
        status, body = await api.call("POST", "/api/v1/alerts", who="duty", json=RED)
        assert status == 201, body
        alert_id = body["alert_id"]
        status, body = await api.call("POST", f"/api/v1/alerts/{alert_id}/approve",
                                      who="approver")
        assert status == 200, body
        path = f"/api/v1/alerts/{alert_id}/receipts"
        async with asyncio.timeout(30):
            while (await api.call("GET", path))[1]["totals"].get("sms", {}).get(  # noqa: ASYNC110
                    "delivered") != 34:
                await asyncio.sleep(0.1)
        await asyncio.sleep(SHARE_FOR)  # what the poll above saw is now stale

        with board_counts_seen() as seen:
            started = time.monotonic()
            answers = []
            for _ in range(2):  # a crowd opens the board, and polls again at once
                answers += await asyncio.gather(*(api.call("GET", path)
                                                  for _ in range(READERS)))
            elapsed = time.monotonic() - started
        assert all(status == 200 for status, _ in answers)
        assert {b["totals"]["sms"]["delivered"] for _, b in answers} == {34}
        # One count, plus at most one more per second the two rounds took (a slow machine
        # may cross a refresh); without sharing, every one of the 100 requests counted.
        assert 1 <= len(seen) <= 1 + int(elapsed), (len(seen), elapsed)


async def test_readers_holding_the_board_pool_leave_senders_their_connections(
    store: Store,
) -> None:
    holding = 0
    most_at_once = 0
    release = asyncio.Event()

    async def reader() -> None:
        nonlocal holding, most_at_once
        async with store.board() as conn:
            await conn.execute(select(1))
            holding += 1
            most_at_once = max(most_at_once, holding)
            await release.wait()
            holding -= 1

    readers = [asyncio.create_task(reader(), name=f"reader-{i}") for i in range(READERS)]
    try:
        async with asyncio.timeout(30):
            while holding < BOARD_POOL_SIZE:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        # The board pool is full and 46 more readers queue for it; senders are not among them.
        async with asyncio.timeout(5):
            async with store.write() as conn:
                assert (await conn.execute(select(1))).scalar_one() == 1
            async with store.read() as conn:
                assert (await conn.execute(select(1))).scalar_one() == 1
    finally:
        release.set()
        await asyncio.gather(*readers)
    assert most_at_once == BOARD_POOL_SIZE


async def test_board_connections_cannot_write(store: Store) -> None:
    """A GET runs on the board pool, so it cannot change state even by mistake."""
    from sqlalchemy import func

    from warngate.store.schema import regions

    async with store.board() as conn:
        try:
            await conn.execute(regions.insert().values(code="339901", name="县", level="county"))
        except Exception as exc:  # the driver's own "read-only" error, different per backend
            assert "read" in str(exc).lower(), exc
        else:
            raise AssertionError("a board connection wrote a row")
    async with store.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(regions))).scalar_one() == 0


async def test_a_shared_read_survives_its_first_caller_going_away(store: Store) -> None:
    runs = 0
    first_started = asyncio.Event()
    go_on = asyncio.Event()

    async def count(conn: AsyncConnection) -> int:
        nonlocal runs
        runs += 1
        first_started.set()
        await go_on.wait()
        return int((await conn.execute(select(7))).scalar_one())

    first = asyncio.create_task(store.shared("k", count), name="first")
    await first_started.wait()
    others = [asyncio.create_task(store.shared("k", count), name=f"other-{i}")
              for i in range(5)]
    await asyncio.sleep(0)
    first.cancel()  # the browser tab that asked first is closed
    go_on.set()
    assert await asyncio.gather(*others) == [7] * 5
    assert first.cancelled()
    assert runs == 2  # one waiter took over; the other four shared its answer


async def test_a_failed_shared_read_reaches_every_waiter_and_is_not_kept(store: Store) -> None:
    calls = 0

    async def broken(conn: AsyncConnection) -> int:
        nonlocal calls
        calls += 1
        await conn.execute(select(1))
        raise LookupError("no such board")

    results = await asyncio.gather(*(store.shared("bad", broken) for _ in range(10)),
                                   return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    assert calls == 1
    # A failure is not an answer: the next reader asks the database again.
    results = await asyncio.gather(store.shared("bad", broken), return_exceptions=True)
    assert calls == 2
