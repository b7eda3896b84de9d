"""A local CAP feed server for tests: ATOM or RSS indexes of CAP messages, with ETags,
304s, failures and slow answers on demand — a real aiohttp application on 127.0.0.1:0.

``big_feed`` generates the kind of feed real bureaus publish: hundreds of entries, some
carrying their CAP message, some linking to it, keys repeated, links that fail for a while,
and linked messages of several hundred KB that arrive slowly in small pieces.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiohttp import web
from aiohttp.test_utils import TestServer

from warngate.demo import demo_cap


@dataclass(frozen=True)
class Item:
    """One ATOM entry: its id, the message it carries or links to, and how."""

    id: str
    name: str  # key into FeedServer.messages
    embed: bool = False
    updated: str = "2026-11-25T00:00:00Z"
    summary: str = ""


@dataclass
class FeedServer:
    messages: dict[str, bytes] = field(default_factory=dict)  # path name → CAP XML
    fail_next: int = 0
    delay: float = 0.0
    embed: bool = False
    #: Further <entry> elements, as written, after the generated ones (ATOM only).
    raw_entries: list[str] = field(default_factory=list)
    #: The ATOM entries, when given; otherwise one per message (``embed`` for all).
    items: list[Item] | None = None
    #: Path → how many more requests for it answer 500.
    fail_paths: dict[str, int] = field(default_factory=dict)
    #: Path → how many more requests for it send half the body and hang up.
    truncate_paths: dict[str, int] = field(default_factory=dict)
    #: Paths whose body is streamed in ``chunk_size`` pieces, ``chunk_delay`` apart; a
    #: client that takes what has arrived so far for the whole body gets a fraction.
    slow_paths: set[str] = field(default_factory=set)
    chunk_size: int = 16_384
    chunk_delay: float = 0.005
    #: Path → an event the answer waits for (the path is in ``waiting`` meanwhile): a test
    #: stops a poller while it is certainly waiting for that answer.
    hold: dict[str, asyncio.Event] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)
    #: (path, If-None-Match, status) of every request.
    log: list[tuple[str, str, int]] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(path, If-None-Match) of every request."""
        return [(p, etag) for p, etag, _ in self.log]

    def served(self, path: str) -> int:
        """How often ``path`` was answered with its whole body."""
        return sum(1 for p, _, status in self.log if p == path and status == 200)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def atom(self) -> bytes:
        items = self.items if self.items is not None else [
            Item(f"urn:test:{name}", name, self.embed, summary=name) for name in self.messages]
        entries = []
        for it in items:
            xml = self.messages[it.name]
            content = link = ""
            if it.embed:
                content = f'<content type="text/xml">{xml.decode().split("?>", 1)[-1]}</content>'
            else:
                link = (f'<link rel="alternate" type="application/cap+xml" '
                        f'href="/cap/{it.name}"/>')
            entries.append(
                f"<entry><id>{it.id}</id><title>{it.name}</title>"
                f"<updated>{it.updated}</updated><summary>{it.summary}</summary>"
                f"{link}{content}</entry>")
        return ('<?xml version="1.0" encoding="UTF-8"?>'
                '<feed xmlns="http://www.w3.org/2005/Atom"><id>urn:test:feed</id>'
                "<title>t</title><updated>2026-11-25T00:00:00Z</updated>"
                + "".join(entries + self.raw_entries) + "</feed>").encode()

    def _rss(self) -> bytes:
        items = "".join(f"<item><guid>urn:test:{n}</guid><link>/cap/{n}</link></item>"
                        for n in self.messages)
        return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
                f"{items}</channel></rss>").encode()

    async def _serve(self, request: web.Request, body: bytes, ctype: str
                     ) -> web.StreamResponse:
        path, inm = request.path, request.headers.get("If-None-Match", "")
        if (held := self.hold.get(path)) is not None:
            self.waiting.add(path)
            await held.wait()
            self.waiting.discard(path)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next or self.fail_paths.get(path):
            if self.fail_paths.get(path):
                self.fail_paths[path] -= 1
            else:
                self.fail_next -= 1
            self.log.append((path, inm, 500))
            return web.Response(status=500, text="upstream broken")
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if inm == etag:
            self.log.append((path, inm, 304))
            return web.Response(status=304, headers={"ETag": etag})
        headers = {"ETag": etag, "Content-Type": ctype}
        if self.truncate_paths.get(path):
            self.truncate_paths[path] -= 1
            self.log.append((path, inm, 206))  # noted apart: the client never got it whole
            resp = web.StreamResponse(headers={**headers, "Content-Length": str(len(body))})
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(self.chunk_delay)
            assert request.transport is not None
            request.transport.close()
            return resp
        self.log.append((path, inm, 200))
        if path not in self.slow_paths:
            return web.Response(body=body, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), self.chunk_size):
            await resp.write(body[i:i + self.chunk_size])
            await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp

    async def _atom_handler(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self.atom(), "application/atom+xml")

    async def _rss_handler(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._rss(), "application/rss+xml")

    async def _cap_handler(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.messages:
            raise web.HTTPNotFound()
        return await self._serve(request, self.messages[name], "application/cap+xml")

    async def __aenter__(self) -> FeedServer:
        app = web.Application()
        app.router.add_get("/atom.xml", self._atom_handler)
        app.router.add_get("/rss.xml", self._rss_handler)
        app.router.add_get("/cap/{name}", self._cap_handler)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.close()


# -- generated documents --------------------------------------------------------------------

def generated_cap(identifier: str, *, polygon_points: int = 0,
                  now: datetime | None = None) -> bytes:
    """A valid CAP message for the small county (``tests.smallcounty``), red rainstorm.

    ``polygon_points`` adds a polygon of that many vertices around the county, as bureaus
    draw them by hand or from radar: about 21 bytes a vertex, so 22,000 make ~460 KB.
    """
    now = now or datetime.now(UTC)
    xml = demo_cap(now).decode()
    xml = re.sub(r"<identifier>[^<]*</identifier>", f"<identifier>{identifier}</identifier>",
                 xml)
    if polygon_points >= 3:
        ring = []
        for k in range(polygon_points):
            a = 2 * math.pi * k / polygon_points
            ring.append(f"{29.5 + 0.4 * math.sin(a):.6f},{120.5 + 0.4 * math.cos(a):.6f}")
        ring.append(ring[0])
        xml = xml.replace("</areaDesc>", f"</areaDesc>\n      <polygon>{' '.join(ring)}</polygon>",
                          1)
    return xml.encode()


@dataclass(frozen=True)
class BigFeed:
    """What ``big_feed`` generated: give ``messages``/``items``/… to a FeedServer."""

    messages: dict[str, bytes]
    items: list[Item]
    fail_paths: dict[str, int]
    slow_paths: set[str]
    identifiers: set[str]

    def install(self, srv: FeedServer) -> None:
        srv.messages = dict(self.messages)
        srv.items = list(self.items)
        srv.fail_paths = dict(self.fail_paths)
        srv.slow_paths = set(self.slow_paths)


def big_feed(entries: int = 520, *, prefix: str = "BIG", large: int = 3,
             large_points: int = 22_000, failing_every: int = 20, repeat_every: int = 50,
             summary_chars: int = 1000) -> BigFeed:
    """An ATOM feed of ``entries`` entries and about 2 MB (with the defaults).

    Every third entry links to its message, the others embed it; every ``failing_every``-th
    link answers 500 once or twice before it works; the first ``large`` linked messages are
    over 460 KB and streamed slowly; every ``repeat_every``-th entry is written twice (same
    id and updated time) and one message is also linked from a second entry of its own.
    Each entry carries a Chinese summary of ``summary_chars`` characters, as real feeds do.
    """
    now = datetime.now(UTC)
    messages: dict[str, bytes] = {}
    items: list[Item] = []
    fail_paths: dict[str, int] = {}
    slow_paths: set[str] = set()
    identifiers: set[str] = set()
    text = ("过去3小时清溪镇、白沙街道降雨量已达100毫米以上，且降雨将持续，山洪、地质灾害风险极高。"
            * (summary_chars // 40 + 1))[:summary_chars]
    linked = 0
    for i in range(entries):
        ident = f"{prefix}-{i:04d}"
        name = f"{ident}.xml"
        embed = i % 3 != 0
        points = 0
        if not embed:
            if linked < large:
                points = large_points
                slow_paths.add(f"/cap/{name}")
            elif linked % failing_every == 0:
                fail_paths[f"/cap/{name}"] = 1 + linked // failing_every % 2
            linked += 1
        # Distinct sent times keep (sender, identifier, sent) distinct in every run.
        messages[name] = generated_cap(ident, polygon_points=points,
                                       now=now + timedelta(seconds=i))
        identifiers.add(ident)
        item = Item(f"urn:{prefix}:{i}", name, embed, f"2026-11-25T00:{i // 60 % 60:02d}:00Z",
                    text)
        items.append(item)
        if i % repeat_every == repeat_every - 1:
            items.append(item)  # the same key again, as some feeds write an edited entry
    # The same message linked from an entry of its own: a second key, still one alert.
    items.append(Item(f"urn:{prefix}:again", items[3].name, False, "2026-11-25T01:00:00Z"))
    return BigFeed(messages, items, fail_paths, slow_paths, identifiers)
