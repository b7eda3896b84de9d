"""What every HTTP answer carries, whichever path made it, and a client that hangs up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from html.parser import HTMLParser

import pytest
from aiohttp import web
from sqlalchemy import func, select

from tests.integration.test_ack_link import Site, link, open_site
from tests.integration.test_api import api_settings
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.store import Store
from warngate.store.schema import rejected_inputs
from warngate.web.app import build_app

ADMIN = {"Authorization": "Bearer tok-admin"}
EVERYWHERE = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Server": "warngate",
}


@pytest.fixture
async def site(store: Store) -> AsyncIterator[Site]:
    async with open_site(store) as s:
        yield s


def check_csp(value: str | None) -> None:
    assert value is not None
    directives = {d.split()[0]: d.split()[1:] for d in value.split(";") if d.strip()}
    assert directives["default-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["object-src"] == ["'none'"]
    assert "'unsafe-inline'" not in value


async def test_every_answer_carries_the_security_headers(site: Site) -> None:
    delivery_id = await site.reached(await site.warn())
    answers: list[tuple[str, str, dict[str, str], int]] = [
        ("GET", "/api/v1/alerts", ADMIN, 200),
        ("GET", "/api/v1/alerts", {}, 401),
        ("GET", "/api/v1/alerts/999999", ADMIN, 404),
        ("POST", "/api/v1/alerts", {**ADMIN, "Content-Type": "application/json"}, 400),
        ("GET", link(delivery_id), {}, 200),
        ("HEAD", link(delivery_id), {}, 200),
        ("GET", "/ack/nothing-of-ours", {}, 404),
        ("PUT", link(delivery_id), {}, 405),
        ("GET", "/healthz", {}, 200),
        ("GET", "/metrics", ADMIN, 200),
        ("GET", "/", {}, 200),
        ("GET", "/static/board.js", {}, 200),
        ("GET", "/static/no-such-file.js", {}, 404),
        ("GET", "/no/such/page", {}, 401),
        ("GET", "/no/such/page", ADMIN, 404),
        ("POST", "/hooks/nobody", {}, 404),
    ]
    for method, path, headers, status in answers:
        resp = await site.client.request(method, path, headers=headers, data=b"{")
        await resp.read()
        assert resp.status == status, (method, path, resp.status)
        for name, value in EVERYWHERE.items():
            assert resp.headers.get(name) == value, (method, path, name, resp.headers)
        check_csp(resp.headers.get("Content-Security-Policy"))
        if not path.startswith("/static/"):
            assert resp.headers.get("Cache-Control") == "no-store", (method, path)


class _Inline(HTMLParser):
    """Finds what a CSP without 'unsafe-inline' would block: inline scripts, styles and
    event handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "style":
            self.found.append("<style>")
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")
        self.found += [f"{tag} {k}=" for k in names if k == "style" or k.startswith("on")]
        self._in = tag

    def handle_data(self, data: str) -> None:
        if self._in == "script" and data.strip():
            self.found.append("script text")


async def test_pages_need_nothing_the_policy_blocks(site: Site) -> None:
    delivery_id = await site.reached(await site.warn())
    for path in ("/", link(delivery_id), "/ack/nothing-of-ours"):
        resp = await site.client.get(path)
        parser = _Inline()
        parser.feed(await resp.text())
        assert parser.found == [], path
    for path in ("/static/board.js", "/static/board.css", "/static/ack.css"):
        resp = await site.client.get(path)
        assert resp.status == 200, path


async def _half_a_body(port: int, path: str, headers: str = "") -> None:
    """Announce 100,000 bytes, send 10, hang up (a phone losing signal mid-upload)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: gw.test\r\n{headers}"
                 "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                 .encode() + b'{"level": ')
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("path", ["/api/v1/alerts", "/api/v1/cap",
                                  "/api/v1/hydrology/readings"])
async def test_a_client_that_hangs_up_mid_body_is_no_error(
    store: Store, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    await write_small_county(store)
    url = store.engine.url.render_as_string(hide_password=False)
    # Served as `warngate serve` serves (web.run_app: handlers run to the end when the
    # client goes away), not as the test client does (which cancels them).
    runner = web.AppRunner(build_app(api_settings(url), policy()))
    await runner.setup()
    try:
        site_ = web.TCPSite(runner, "127.0.0.1", 0)
        await site_.start()
        port = runner.addresses[0][1]
        caplog.set_level(logging.INFO)
        # A CLI run earlier in this process quiets the access log (warngate.cli): not here.
        caplog.set_level(logging.INFO, logger="aiohttp.access")
        answered = _Answered(path)
        logging.getLogger("aiohttp.access").addHandler(answered)
        try:
            await _half_a_body(port, path, "Authorization: Bearer tok-admin\r\n")
            async with asyncio.timeout(30):
                await answered.event.wait()
        finally:
            logging.getLogger("aiohttp.access").removeHandler(answered)
    finally:
        await runner.cleanup()
    ours = [r for r in caplog.records if r.name.startswith(("warngate.web", "aiohttp"))]
    errors = [r for r in ours if r.levelno >= logging.WARNING or r.exc_info]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]
    assert any(r.name == "warngate.web.app" and r.levelno == logging.INFO
               and "client went away" in r.getMessage() for r in caplog.records)
    async with store.read() as conn:
        kept = (await conn.execute(select(func.count()).select_from(rejected_inputs)))
        assert kept.scalar_one() == 0


class _Answered(logging.Handler):
    """aiohttp logs the access once the handler has finished with the request."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.path in record.getMessage():
            self.event.set()
