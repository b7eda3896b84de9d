"""Polled CAP sources: ATOM and RSS indexes of CAP messages, and plain CAP URLs.

Each configured feed is polled by an APScheduler job at its interval, with conditional GET
(ETag / If-Modified-Since). Every entry is fetched once (the keys seen are stored, so a
restart does not fetch them again); CAP embedded in the entry (ATOM ``content``, EDXL-DE) is
used as it is. A failing feed backs off exponentially with jitter and shows as down on
``/healthz`` and ``/metrics``; it never stops the other feeds or the gateway.

A document's validator (ETag / Last-Modified) is kept only once every entry of it has been
taken: an entry whose fetch failed (timeout, 5xx, a body cut short) is not remembered, so the
next poll fetches the document whole and tries it again. Only an entry that is refused for
what it is (invalid CAP, a sender not allowed, larger than ``max_bytes``) is remembered.
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
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from warngate.access import ANY_SENDER
from warngate.alerts import record_rejection
from warngate.feedformat import Entry, FeedFormatError, read_entries
from warngate.settings import FeedSettings
from warngate.store import Store
from warngate.store.schema import feed_entries

if TYPE_CHECKING:
    from warngate.alerts import AlertService

log = logging.getLogger(__name__)

_MAX_BACKOFF = 3600.0
#: Bytes asked of the stream per read; it answers with what has arrived, up to this.
_CHUNK = 65_536


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
    #: Entries of the last poll whose fetch failed; tried again at the next poll.
    retrying: int = 0

    @property
    def up(self) -> bool:
        # A feed whose alerts do not arrive is not up, even if its index reads fine.
        return self.failures == 0 and self.retrying == 0

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "up": self.up, "last_ok": self.last_ok,
                "failures": self.failures, "last_error": self.last_error,
                "retrying": self.retrying, "accepted": self.accepted,
                "rejected": self.rejected}


class FeedError(Exception):
    """The feed could not be read (network, HTTP status, size, XML)."""


class TooLarge(FeedError):
    """The body is larger than ``max_bytes``: a refusal of the document, not a failure of
    the network, so a linked message this large is kept as rejected and not fetched again."""

    def __init__(self, message: str, head: bytes) -> None:
        super().__init__(message)
        #: What was read before the limit was passed (kept with the refusal).
        self.head = head


@dataclass
class FeedPoller:
    """Polls every configured feed; owns one HTTP session while running."""

    feeds: tuple[FeedSettings, ...]
    store: Store
    alerts: AlertService
    status: dict[str, FeedStatus] = field(default_factory=dict)
    #: Trusted signing certificates (PEM) for a CAP sender; none means "report only".
    trusted: Callable[[str], list[str]] = lambda _sender: []
    #: Entries accepted per write to ``feed_entries``; a poll that stops loses at most
    #: these (fetched again, then recognised as the alerts they already are).
    remember_every: int = 50
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
        # Entries left to retry do not back the feed off: they are tried at the next poll.
        st.failures, st.last_ok, st.next_at = 0, time.time(), 0.0
        if not st.retrying:
            st.last_error = None
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
        # Forget the old validator until this version is finished: a poll that stops half
        # way (an error, a restart) must not be answered "304 Not Modified" next time.
        st.etag = st.last_modified = None
        try:
            entries = read_entries(body, feed.url, feed.kind)
        except FeedFormatError as exc:
            raise FeedError(str(exc)) from exc
        unique: dict[str, Entry] = {}
        for e in entries:  # in document order; of entries sharing a key the first is taken
            unique.setdefault(e.key, e)
        if len(unique) < len(entries):
            log.info("feed %s: %d entries repeat a key of the same document; taken once",
                     feed.name, len(entries) - len(unique))
        seen = await self._seen(feed.name, list(unique))
        new = [e for key, e in unique.items() if key not in seen]
        if len(new) > feed.max_entries:
            log.warning("feed %s: %d new entries; taking %d now, the rest at the next poll",
                        feed.name, len(new), feed.max_entries)
        accepted, failed = 0, []
        done: list[dict[str, Any]] = []  # feed_entries rows not yet written
        for entry in new[: feed.max_entries]:
            try:
                new_alert, outcome = await self._take(feed, st, entry)
            except FeedError as exc:
                # Not remembered: tried again at the next poll.
                log.warning("feed %s: entry %s: %s (tried again at the next poll)",
                            feed.name, entry.key, exc)
                failed.append(f"entry {entry.key}: {exc}")
                continue
            except Exception as exc:  # one entry's bug must not hold back the entries after it
                log.exception("feed %s: entry %s failed", feed.name, entry.key)
                failed.append(f"entry {entry.key}: internal error: {exc!r}")
                continue
            accepted += new_alert
            done.append({"feed": feed.name, "entry_key": entry.key, "url": entry.url,
                         "outcome": outcome[:500], "at": time.time()})
            # One write per batch, not per entry: commits are most of the cost of an entry.
            # Entries taken but not yet written when the poll stops are fetched again and
            # found to be the alerts they already are; a refusal is written at once, so it
            # is kept in rejected_inputs once.
            if len(done) >= self.remember_every or outcome != "accepted":
                await self._remember(done)
                done = []
        await self._remember(done)
        st.retrying = len(failed)
        if failed:
            st.last_error = "; ".join(failed[:3]) + (
                f" (and {len(failed) - 3} more)" if len(failed) > 3 else "")
        elif len(new) <= feed.max_entries:
            # Every entry of this version is taken or refused for good: it need not be read
            # again until it changes.
            st.etag = resp_headers.get("ETag")
            st.last_modified = resp_headers.get("Last-Modified")
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
                body = await _read_body(resp, url, feed.max_bytes)
                return resp.status, body, resp.headers
        except TimeoutError as exc:
            raise FeedError(f"GET {url}: no answer within {feed.timeout:g} s") from exc
        except aiohttp.ClientError as exc:  # refused, reset, a body cut short
            raise FeedError(f"GET {url}: {exc}") from exc

    async def _take(self, feed: FeedSettings, st: FeedStatus, entry: Entry
                    ) -> tuple[int, str]:
        """Fetch (if needed), parse and accept one entry, or keep its refusal.

        Returns (1 for a new alert else 0, the outcome to remember). Raises FeedError,
        leaving the entry to the next poll, when its message could not be fetched whole.
        """
        from warngate.cap import CapError, parse_cap, verify_signature
        from warngate.sources import cap_to_alert_with_geometry

        source = f"feed {feed.name}"
        if entry.problem is not None:
            return 0, await self._refuse(st, entry, source, entry.problem, entry.body)
        body = entry.embedded
        if body is None:
            assert entry.url is not None
            try:
                _, body, _ = await self._get(feed, entry.url, dict(feed.headers))
            except TooLarge as exc:
                return 0, await self._refuse(
                    st, entry, source,
                    f"too-large: {exc}; raise feeds[].max_bytes to take it", exc.head)
        try:
            cap = parse_cap(body, max_bytes=feed.max_bytes)
        except CapError as exc:
            return 0, await self._refuse(st, entry, source, str(exc), body)
        signature = verify_signature(cap, self.trusted(cap.sender))
        if feed.senders and ANY_SENDER not in feed.senders and cap.sender not in feed.senders:
            return 0, await self._refuse(
                st, entry, source,
                f"sender {cap.sender!r} is not allowed for feed {feed.name}", body)
        # An Update or Cancel may lift only alerts this feed may speak for: those of its
        # message's own sender, or of the senders listed for it (a bureau's feed must not
        # end a duty officer's warning).
        if ANY_SENDER not in feed.senders:
            foreign = sorted({r.sender for r in cap.references}
                             - {cap.sender, *feed.senders})
            if foreign:
                return 0, await self._refuse(
                    st, entry, source,
                    f"sender-not-allowed: references alerts of {', '.join(map(repr, foreign))}"
                    f", which feed {feed.name} may not name (list them in feeds[].senders)",
                    body)
        if signature.outcome == "invalid":
            return 0, await self._refuse(st, entry, source,
                                         f"signature-invalid: {signature.detail}", body)
        new = await cap_to_alert_with_geometry(self.store, cap, actor=source,
                                               signature=signature)
        # The same message under a second key is the same alert: accept() says so.
        duplicate = (await self.alerts.accept(new, actor=source)).duplicate
        st.accepted += 1
        return (0 if duplicate else 1), "accepted"

    async def _refuse(self, st: FeedStatus, entry: Entry, source: str, reason: str,
                      body: bytes | None) -> str:
        """Keep a refused entry in rejected_inputs; the outcome to remember."""
        st.rejected += 1
        await record_rejection(self.store, entry_point=source, source=entry.url or entry.key,
                               reason=reason, body=body, content_type="application/cap+xml")
        return f"rejected: {reason}"

    async def _remember(self, rows: list[dict[str, Any]]) -> None:
        """Record entries as done, so they are never fetched again."""
        if not rows:
            return
        async with self.store.write() as conn:
            # Another process polling the same feed may have taken an entry meanwhile.
            dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            await conn.execute(dialect_insert(feed_entries).on_conflict_do_nothing(), rows)

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


async def _read_body(resp: aiohttp.ClientResponse, url: str, limit: int) -> bytes:
    """The whole body, or TooLarge as soon as it passes ``limit`` bytes.

    ``StreamReader.read(n)`` answers with what has arrived so far, which for a large body on a
    slow line is a fraction of it: read until EOF. A body that ends before its Content-Length
    raises ClientPayloadError, a network failure, never a short document.
    """
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise TooLarge(f"GET {url}: body of {declared} bytes exceeds {limit} bytes", b"")
    parts: list[bytes] = []
    size = 0
    while chunk := await resp.content.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            parts.append(chunk)
            raise TooLarge(f"GET {url}: body exceeds {limit} bytes",
                           b"".join(parts)[:limit])
        parts.append(chunk)
    return b"".join(parts)


def health(poller: FeedPoller | None) -> list[dict[str, Any]]:
    return [] if poller is None else [s.as_json() for s in poller.status.values()]


async def poll_all(poller: FeedPoller) -> None:
    """Poll every feed once (the CLI and tests use it; the service schedules per feed)."""
    await asyncio.gather(*(poller.poll(f) for f in poller.feeds))
