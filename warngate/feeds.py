"""Polled CAP sources: ATOM and RSS indexes of CAP messages, and plain CAP URLs.

Each configured feed is polled by an APScheduler job at its interval, with conditional GET
(ETag / If-Modified-Since). Every entry is fetched once (the keys seen are stored, so a
restart does not fetch them again); CAP embedded in the entry (ATOM ``content``, EDXL-DE) is
used as it is. A failing feed backs off exponentially with jitter and shows as down on
``/healthz`` and ``/metrics``; it never stops the other feeds or the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy import insert, select

from warngate.alerts import record_rejection
from warngate.feedformat import Entry, FeedFormatError, read_entries
from warngate.settings import FeedSettings
from warngate.store import Store
from warngate.store.schema import feed_entries

if TYPE_CHECKING:
    from warngate.alerts import AlertService

log = logging.getLogger(__name__)

_MAX_BACKOFF = 3600.0


@dataclass
class FeedStatus:
    name: str
    last_ok: float | None = None
    last_attempt: float | None = None
    failures: int = 0
    last_error: str | None = None
    next_at: float = 0.0
    accepted: int = 0
    rejected: int = 0
    etag: str | None = None
    last_modified: str | None = None

    @property
    def up(self) -> bool:
        return self.failures == 0

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "up": self.up, "last_ok": self.last_ok,
                "failures": self.failures, "last_error": self.last_error,
                "accepted": self.accepted, "rejected": self.rejected}


class FeedError(Exception):
    """The feed could not be read (network, HTTP status, size, XML)."""


@dataclass
class FeedPoller:
    """Polls every configured feed; owns one HTTP session while running."""

    feeds: tuple[FeedSettings, ...]
    store: Store
    alerts: AlertService
    status: dict[str, FeedStatus] = field(default_factory=dict)
    #: Trusted signing certificates (PEM) for a CAP sender; none means "report only".
    trusted: Callable[[str], list[str]] = lambda _sender: []
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self.status = {f.name: FeedStatus(f.name) for f in self.feeds}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": "warngate (CAP consumer)"})

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def poll_due(self, feed: FeedSettings) -> None:
        """The scheduled job: poll unless the feed is backing off."""
        st = self.status[feed.name]
        if time.time() < st.next_at:
            return
        await self.poll(feed)

    async def poll(self, feed: FeedSettings) -> int:
        """Poll once; return how many new alerts were accepted. Never raises."""
        st = self.status[feed.name]
        st.last_attempt = time.time()
        try:
            accepted = await self._poll(feed, st)
        except FeedError as exc:
            st.failures += 1
            st.last_error = str(exc)
            delay = min(_MAX_BACKOFF, feed.interval * 2 ** min(st.failures, 12))
            st.next_at = time.time() + random.uniform(delay / 2, delay)
            log.warning("feed %s: %s (failure %d; next try in %.0f s)", feed.name, exc,
                        st.failures, st.next_at - time.time())
            return 0
        except Exception as exc:  # a bug here must not stop the scheduler's other jobs
            st.failures += 1
            st.last_error = f"internal error: {exc!r}"
            st.next_at = time.time() + feed.interval
            log.exception("feed %s: poll failed", feed.name)
            return 0
        if st.failures:
            log.info("feed %s is back after %d failures", feed.name, st.failures)
        st.failures, st.last_error, st.last_ok, st.next_at = 0, None, time.time(), 0.0
        return accepted

    # -- one poll ---------------------------------------------------------------------------

    async def _poll(self, feed: FeedSettings, st: FeedStatus) -> int:
        headers = dict(feed.headers)
        if st.etag:
            headers["If-None-Match"] = st.etag
        if st.last_modified:
            headers["If-Modified-Since"] = st.last_modified
        status, body, resp_headers = await self._get(feed, feed.url, headers)
        if status == 304:
            return 0
        try:
            entries = read_entries(body, feed.url, feed.kind)
        except FeedFormatError as exc:
            raise FeedError(str(exc)) from exc
        seen = await self._seen(feed.name, [e.key for e in entries])
        new = [e for e in entries if e.key not in seen]
        if len(new) > feed.max_entries:
            # The rest waits for the next poll, which must then fetch the document again.
            log.warning("feed %s: %d new entries; taking %d now, the rest at the next poll",
                        feed.name, len(new), feed.max_entries)
            st.etag = st.last_modified = None
        else:
            st.etag = resp_headers.get("ETag")
            st.last_modified = resp_headers.get("Last-Modified")
        accepted = 0
        for entry in new[: feed.max_entries]:
            accepted += await self._take(feed, st, entry)
        return accepted

    async def _get(self, feed: FeedSettings, url: str, headers: dict[str, str]
                   ) -> tuple[int, bytes, Any]:
        if self._session is None:
            raise RuntimeError("FeedPoller used before start()")
        try:
            async with self._session.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=feed.timeout),
            ) as resp:
                if resp.status == 304:
                    return 304, b"", resp.headers
                if resp.status != 200:
                    raise FeedError(f"GET {url}: HTTP {resp.status}")
                body = await resp.content.read(feed.max_bytes + 1)
                if len(body) > feed.max_bytes:
                    raise FeedError(f"GET {url}: body exceeds {feed.max_bytes} bytes")
                return resp.status, body, resp.headers
        except TimeoutError as exc:
            raise FeedError(f"GET {url}: no answer within {feed.timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise FeedError(f"GET {url}: {exc}") from exc

    async def _take(self, feed: FeedSettings, st: FeedStatus, entry: Entry) -> int:
        """Fetch (if needed), parse and accept one entry; remember it whatever happens."""
        from warngate.cap import CapError, parse_cap, verify_signature
        from warngate.sources import cap_to_alert_with_geometry

        source = f"feed {feed.name}"
        if entry.problem is not None:
            return await self._remember(feed, st, entry, source, entry.problem, entry.body)
        body = entry.embedded
        if body is None:
            assert entry.url is not None
            try:
                _, body, _ = await self._get(feed, entry.url, dict(feed.headers))
            except FeedError as exc:
                # Not remembered: the entry is tried again at the next poll.
                log.warning("feed %s: entry %s: %s", feed.name, entry.key, exc)
                return 0
        reason = None
        try:
            cap = parse_cap(body, max_bytes=feed.max_bytes)
        except CapError as exc:
            reason = str(exc)
        else:
            signature = verify_signature(cap, self.trusted(cap.sender))
            if feed.senders and cap.sender not in feed.senders:
                reason = f"sender {cap.sender!r} is not allowed for feed {feed.name}"
            elif signature.outcome == "invalid":
                reason = f"signature-invalid: {signature.detail}"
            else:
                new = await cap_to_alert_with_geometry(self.store, cap, actor=source,
                                                       signature=signature)
                await self.alerts.accept(new, actor=source)
                st.accepted += 1
        return await self._remember(feed, st, entry, source, reason, body)

    async def _remember(self, feed: FeedSettings, st: FeedStatus, entry: Entry, source: str,
                        reason: str | None, body: bytes | None) -> int:
        """Record the entry as taken (so it is never fetched again); keep a refusal."""
        outcome = "accepted"
        if reason is not None:
            outcome = f"rejected: {reason}"
            st.rejected += 1
            await record_rejection(self.store, entry_point=source, source=entry.url or
                                   entry.key, reason=reason, body=body,
                                   content_type="application/cap+xml")
        async with self.store.write() as conn:
            await conn.execute(insert(feed_entries).values(
                feed=feed.name, entry_key=entry.key, url=entry.url, outcome=outcome[:500],
                at=time.time()))
        return 1 if outcome == "accepted" else 0

    async def _seen(self, feed: str, keys: list[str]) -> set[str]:
        found: set[str] = set()
        async with self.store.read() as conn:
            for i in range(0, len(keys), 500):
                found.update((await conn.execute(
                    select(feed_entries.c.entry_key).where(
                        feed_entries.c.feed == feed,
                        feed_entries.c.entry_key.in_(keys[i:i + 500]))
                )).scalars())
        return found


def health(poller: FeedPoller | None) -> list[dict[str, Any]]:
    return [] if poller is None else [s.as_json() for s in poller.status.values()]


async def poll_all(poller: FeedPoller) -> None:
    """Poll every feed once (the CLI and tests use it; the service schedules per feed)."""
    await asyncio.gather(*(poller.poll(f) for f in poller.feeds))
