"""Polled CAP sources: ATOM and RSS indexes of CAP messages, and plain CAP URLs.

Each configured feed is polled by an APScheduler job at its interval, with conditional GET
(ETag / If-Modified-Since). Every entry is fetched once (the keys seen are stored, so a
restart does not fetch them again); CAP embedded in the entry (ATOM ``content``, EDXL-DE) is
used as it is. A failing feed backs off exponentially with jitter and shows as down on
``/healthz`` and ``/metrics``; it never stops the other feeds or the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import aiohttp
from defusedxml import ElementTree as SafeET
from sqlalchemy import insert, select

from warngate.alerts import record_rejection
from warngate.settings import FeedSettings
from warngate.store import Store
from warngate.store.schema import feed_entries

if TYPE_CHECKING:
    from warngate.alerts import AlertService

log = logging.getLogger(__name__)

_ATOM = "{http://www.w3.org/2005/Atom}"
_CAP_NAMESPACES = ("urn:oasis:names:tc:emergency:cap:1.2", "urn:oasis:names:tc:emergency:cap:1.1")
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


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    url: str | None = None
    #: A CAP message carried inside the entry itself.
    embedded: bytes | None = None


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
        st.etag = resp_headers.get("ETag")
        st.last_modified = resp_headers.get("Last-Modified")
        try:
            root = SafeET.fromstring(body)
        except Exception as exc:  # defusedxml raises several types; all mean "not usable"
            raise FeedError(f"feed is not well-formed, safe XML: {exc}") from exc
        entries = list(_entries(root, body, feed))[: feed.max_entries]
        seen = await self._seen(feed.name, [e.key for e in entries])
        accepted = 0
        for entry in entries:
            if entry.key in seen:
                continue
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


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_cap(el: ET.Element) -> ET.Element | None:
    for node in el.iter():
        if _local(node.tag) == "alert" and node.tag.strip("{").split("}")[0] in _CAP_NAMESPACES:
            return node
    return None


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _entries(root: ET.Element, body: bytes, feed: FeedSettings) -> Iterator[Entry]:
    kind: str = feed.kind
    if kind == "auto":
        name = _local(root.tag)
        kind = {"feed": "atom", "rss": "rss", "RDF": "rss"}.get(name, "cap")
    if kind == "cap":
        # A bare CAP URL (or an EDXL-DE envelope): the message is its own single entry.
        cap = root if _local(root.tag) == "alert" else _find_cap(root)
        if cap is None:
            raise FeedError("document is neither ATOM, RSS nor CAP")
        data = body if cap is root else ET.tostring(cap, encoding="utf-8")
        yield Entry(key=_digest(data), url=feed.url, embedded=data)
        return
    if kind == "atom":
        for e in root.iter(f"{_ATOM}entry"):
            embedded = _find_cap(e)
            ident = (e.findtext(f"{_ATOM}id") or "").strip()
            updated = (e.findtext(f"{_ATOM}updated") or "").strip()
            href = None
            for link in e.iter(f"{_ATOM}link"):
                h = link.get("href")
                if not h:
                    continue
                rel, typ = link.get("rel", "alternate"), link.get("type", "")
                if "cap" in typ or (href is None and rel in ("alternate", "enclosure")):
                    href = urljoin(feed.url, h)
            if embedded is not None:
                data = ET.tostring(embedded, encoding="utf-8")
                yield Entry(key=f"{ident}@{updated}" if ident else _digest(data),
                            url=href, embedded=data)
            elif href:
                yield Entry(key=f"{ident or href}@{updated}", url=href)
        return
    for item in root.iter("item"):
        embedded = _find_cap(item)
        guid = (item.findtext("guid") or "").strip()
        target = (item.findtext("link") or "").strip()
        enclosure = item.find("enclosure")
        if enclosure is not None and enclosure.get("url"):
            target = enclosure.get("url") or target
        if embedded is not None:
            data = ET.tostring(embedded, encoding="utf-8")
            yield Entry(key=guid or _digest(data), url=target or None, embedded=data)
        elif target:
            yield Entry(key=guid or target, url=urljoin(feed.url, target))


def health(poller: FeedPoller | None) -> list[dict[str, Any]]:
    return [] if poller is None else [s.as_json() for s in poller.status.values()]


async def poll_all(poller: FeedPoller) -> None:
    """Poll every feed once (the CLI and tests use it; the service schedules per feed)."""
    await asyncio.gather(*(poller.poll(f) for f in poller.feeds))
