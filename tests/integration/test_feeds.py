"""Polled CAP feeds against a local feed server: new entries become alerts once, 304s fetch
nothing, a broken feed backs off and shows as down, invalid entries are kept as rejected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.feed_server import FeedServer
from tests.integration.test_api import cap_message
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.alerts import AlertService
from warngate.feeds import FeedPoller
from warngate.settings import FeedSettings
from warngate.store import Store
from warngate.store.schema import alerts, rejected_inputs


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'feeds.db'}")
    await write_small_county(s)
    try:
        yield s
    finally:
        await s.close()


async def count(store: Store, table: object) -> int:
    async with store.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def poller_for(store: Store, feed: FeedSettings) -> FeedPoller:
    p = FeedPoller((feed,), store, AlertService(store, policy()))
    await p.start()
    return p


@pytest.mark.parametrize(("path", "embed"), [("/atom.xml", False), ("/atom.xml", True),
                                             ("/rss.xml", False)])
async def test_entries_become_alerts_once(store: Store, path: str, embed: bool) -> None:
    async with FeedServer(embed=embed) as srv:
        srv.messages = {"a.xml": cap_message("F-1"), "b.xml": cap_message("F-2")}
        poller = await poller_for(store, FeedSettings(name="met", url=srv.url(path)))
        try:
            assert await poller.poll(poller.feeds[0]) == 2
            assert await count(store, alerts) == 2
            # Unchanged feed: a 304, nothing fetched.
            before = len(srv.requests)
            assert await poller.poll(poller.feeds[0]) == 0
            assert len(srv.requests) == before + 1 and srv.requests[-1][1]
            # A third entry appears: only it is fetched.
            srv.messages["c.xml"] = cap_message("F-3")
            assert await poller.poll(poller.feeds[0]) == 1
            fetched = [p for p, _ in srv.requests if p.startswith("/cap/")]
            assert len(fetched) == (0 if embed or (path == "/atom.xml" and embed) else 3)
        finally:
            await poller.stop()
    assert await count(store, alerts) == 3
    assert poller.status["met"].up and poller.status["met"].accepted == 3


async def test_broken_feed_backs_off_and_recovers(store: Store) -> None:
    async with FeedServer() as srv:
        srv.messages = {"a.xml": cap_message("F-10")}
        srv.fail_next = 2
        feed = FeedSettings(name="met", url=srv.url("/atom.xml"), interval=0.01)
        poller = await poller_for(store, feed)
        try:
            assert await poller.poll(feed) == 0
            st = poller.status["met"]
            assert not st.up and st.failures == 1 and "HTTP 500" in (st.last_error or "")
            assert st.next_at > 0
            await poller.poll_due(feed)  # backing off: skipped unless the time has come
            await poller.poll(feed)
            assert st.failures == 2
            assert await poller.poll(feed) == 1
            assert st.up and st.last_error is None
        finally:
            await poller.stop()


async def test_slow_feed_times_out(store: Store) -> None:
    async with FeedServer(delay=2.0) as srv:
        feed = FeedSettings(name="slow", url=srv.url("/atom.xml"), timeout=0.2)
        poller = await poller_for(store, feed)
        try:
            assert await poller.poll(feed) == 0
        finally:
            await poller.stop()
    assert "no answer within 0.2 s" in (poller.status["slow"].last_error or "")


async def test_invalid_entry_is_kept_and_not_fetched_again(store: Store) -> None:
    async with FeedServer() as srv:
        srv.messages = {"bad.xml": b"<alert>broken", "ok.xml": cap_message("F-20")}
        feed = FeedSettings(name="met", url=srv.url("/atom.xml"))
        poller = await poller_for(store, feed)
        try:
            assert await poller.poll(feed) == 1
            srv.messages["new.xml"] = cap_message("F-21")
            assert await poller.poll(feed) == 1
        finally:
            await poller.stop()
        assert [p for p, _ in srv.requests].count("/cap/bad.xml") == 1
    async with store.read() as conn:
        [row] = (await conn.execute(select(rejected_inputs))).all()
    assert row.entry_point == "feed met" and row.reason.startswith("xml-syntax")
    assert poller.status["met"].rejected == 1


async def test_not_a_feed(store: Store) -> None:
    async with FeedServer() as srv:
        srv.messages = {"x.xml": b"<html><body>maintenance</body></html>"}
        feed = FeedSettings(name="web", url=srv.url("/cap/x.xml"))
        poller = await poller_for(store, feed)
        try:
            await poller.poll(feed)
        finally:
            await poller.stop()
    assert "neither ATOM, RSS nor CAP" in (poller.status["web"].last_error or "")


def envelope(*messages: bytes) -> bytes:
    """An EDXL-DE distribution carrying ``messages``, as NSW RFS publishes its alerts."""
    objects = "".join(
        "<contentObject><xmlContent><embeddedXMLContent>"
        f"{m.decode().split('?>', 1)[-1]}</embeddedXMLContent></xmlContent></contentObject>"
        for m in messages)
    return ('<EDXLDistribution xmlns="urn:oasis:names:tc:emergency:EDXL:DE:1.0">'
            f"{objects}</EDXLDistribution>").encode()


async def test_every_message_of_an_edxl_envelope_is_taken(store: Store) -> None:
    async with FeedServer() as srv:
        srv.messages = {"rfs.xml": envelope(cap_message("E-1"), b"<alert xmlns="
                                            b'"urn:oasis:names:tc:emergency:cap:1.2"/>',
                                            cap_message("E-2"))}
        feed = FeedSettings(name="rfs", url=srv.url("/cap/rfs.xml"))
        poller = await poller_for(store, feed)
        try:
            assert await poller.poll(feed) == 2
            assert await poller.poll(feed) == 0  # 304
        finally:
            await poller.stop()
    async with store.read() as conn:
        identifiers = set((await conn.execute(select(alerts.c.identifier))).scalars())
        [row] = (await conn.execute(select(rejected_inputs))).all()
    assert identifiers == {"E-1", "E-2"}
    assert row.reason.startswith("schema") and poller.status["rfs"].rejected == 1


async def test_entries_beyond_max_entries_are_taken_at_the_next_poll(store: Store) -> None:
    async with FeedServer() as srv:
        srv.messages = {f"{i}.xml": cap_message(f"M-{i}") for i in range(5)}
        feed = FeedSettings(name="met", url=srv.url("/atom.xml"), max_entries=2)
        poller = await poller_for(store, feed)
        try:
            assert [await poller.poll(feed) for _ in range(4)] == [2, 2, 1, 0]
        finally:
            await poller.stop()
        # Until everything was taken the index was fetched whole; then a 304.
        index = [etag for path, etag in srv.requests if path == "/atom.xml"]
        assert [bool(e) for e in index] == [False, False, False, True]
    assert await count(store, alerts) == 5


async def test_an_entry_with_nothing_to_take_is_kept_once(store: Store) -> None:
    async with FeedServer() as srv:
        srv.messages = {"a.xml": cap_message("N-1")}
        srv.raw_entries = ["<entry><id>urn:test:empty</id><title>停电通知</title>"
                           "<updated>2026-11-25T00:00:00Z</updated></entry>"]
        feed = FeedSettings(name="met", url=srv.url("/atom.xml"))
        poller = await poller_for(store, feed)
        try:
            assert await poller.poll(feed) == 1
            srv.messages["b.xml"] = cap_message("N-2")  # the index changes: fetched again
            assert await poller.poll(feed) == 1
        finally:
            await poller.stop()
    async with store.read() as conn:
        [row] = (await conn.execute(select(rejected_inputs))).all()
    assert row.reason == "entry has neither a link nor an embedded CAP message"
    assert row.body is not None and "停电通知" in row.body.decode()
