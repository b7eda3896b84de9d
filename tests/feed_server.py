"""A local CAP feed server for tests: ATOM or RSS indexes of CAP messages, with ETags,
304s, failures and slow answers on demand — a real aiohttp application on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class FeedServer:
    messages: dict[str, bytes] = field(default_factory=dict)  # path name → CAP XML
    fail_next: int = 0
    delay: float = 0.0
    embed: bool = False
    #: Further <entry> elements, as written, after the generated ones (ATOM only).
    raw_entries: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, If-None-Match)
    server: TestServer | None = None

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def _atom(self) -> bytes:
        entries = []
        for name, xml in self.messages.items():
            body = xml.decode().split("?>", 1)[-1] if self.embed else ""
            link = "" if self.embed else (
                f'<link rel="alternate" type="application/cap+xml" href="/cap/{name}"/>')
            content = f'<content type="text/xml">{body}</content>' if body else ""
            entries.append(
                f"<entry><id>urn:test:{name}</id><title>{name}</title>"
                f"<updated>2026-11-25T00:00:00Z</updated>{link}{content}</entry>")
        return ('<?xml version="1.0" encoding="UTF-8"?>'
                '<feed xmlns="http://www.w3.org/2005/Atom"><id>urn:test:feed</id>'
                "<title>t</title><updated>2026-11-25T00:00:00Z</updated>"
                + "".join(entries + self.raw_entries) + "</feed>").encode()

    def _rss(self) -> bytes:
        items = "".join(f"<item><guid>urn:test:{n}</guid><link>/cap/{n}</link></item>"
                        for n in self.messages)
        return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
                f"{items}</channel></rss>").encode()

    async def _serve(self, request: web.Request, body: bytes, ctype: str) -> web.Response:
        self.requests.append((request.path, request.headers.get("If-None-Match", "")))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=500, text="upstream broken")
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type=ctype, headers={"ETag": etag})

    async def atom(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._atom(), "application/atom+xml")

    async def rss(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._rss(), "application/rss+xml")

    async def cap(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.messages:
            raise web.HTTPNotFound()
        return await self._serve(request, self.messages[name], "application/cap+xml")

    async def __aenter__(self) -> FeedServer:
        app = web.Application()
        app.router.add_get("/atom.xml", self.atom)
        app.router.add_get("/rss.xml", self.rss)
        app.router.add_get("/cap/{name}", self.cap)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.close()
