"""Acknowledgement links as the person holding one sees them, on SQLite and PostgreSQL.

Opening a link (GET, or HEAD as link previewers and scanners do) shows the warning and
records nothing; only the "确认收到" button (POST) acknowledges, and only while the warning
stands. Alert texts come from any CAP sender, so the page escapes them.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select, update

from tests.gateway_run import ADMIN, TOWNSHIP, wait_until
from tests.integration.test_api import ACK_KEY, CAP_HEADERS, api_settings, cap_message
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.acktoken import make_token
from warngate.alerts import Actor, ComposeRequest
from warngate.escalation import expire_due
from warngate.service import Gateway
from warngate.store import Store
from warngate.store.schema import acknowledgements, alerts, deliveries
from warngate.web.app import GATEWAY, build_app

APPROVER = Actor("approver", "approver")  # four eyes: not the composer
BUTTON = re.compile(r'<form method="post">\s*<button type="submit">确认收到</button>')


@dataclass
class Site:
    client: TestClient[Any, Any]
    gw: Gateway
    store: Store

    async def warn(self, headline: str = "夏溪县气象台发布暴雨红色预警",
                   instruction: str = "请立即转移到安置点。") -> int:
        accepted = await self.gw.alerts.compose(ADMIN, ComposeRequest(
            level="red", event="暴雨", headline=headline,  # type: ignore[arg-type]
            description="预计未来3小时内将出现50毫米以上降水。", instruction=instruction,
            areas=[TOWNSHIP]))
        await self.gw.alerts.approve(APPROVER, accepted.alert_id)
        return accepted.alert_id

    async def reached(self, alert_id: int) -> int:
        """A grid worker's delivery of ``alert_id`` once it has reached them (it has a link)."""
        [row] = await wait_until(self.store, select(deliveries.c.id).where(
            deliveries.c.alert_id == alert_id, deliveries.c.kind == "alert",
            deliveries.c.role == "grid_worker", deliveries.c.state == "delivered",
        ).order_by(deliveries.c.id).limit(1), bool)
        return int(row.id)

    async def recorded(self, delivery_id: int) -> tuple[int, str, float | None]:
        """(acknowledgements stored, delivery state, acked_at), after the writer has written
        everything it holds."""
        await self.gw.receipts.flush()
        async with self.store.read() as conn:
            n = (await conn.execute(select(func.count()).select_from(acknowledgements).where(
                acknowledgements.c.delivery_id == delivery_id))).scalar_one()
            row = (await conn.execute(select(deliveries.c.state, deliveries.c.acked_at).where(
                deliveries.c.id == delivery_id))).one()
        return int(n), row.state, row.acked_at


def link(delivery_id: int) -> str:
    return f"/ack/{make_token(ACK_KEY.encode(), delivery_id)}"


@contextlib.asynccontextmanager
async def open_site(store: Store) -> AsyncIterator[Site]:
    """The whole service over a small county, nobody escalated during a test."""
    await write_small_county(store)
    url = store.engine.url.render_as_string(hide_password=False)
    app = build_app(api_settings(url), policy(step1_after=600, step2_after=1200))
    async with TestClient(TestServer(app)) as client:
        yield Site(client, app[GATEWAY], store)


@pytest.fixture
async def site(store: Store) -> AsyncIterator[Site]:
    async with open_site(store) as s:
        yield s


async def test_opening_a_link_shows_the_warning_and_acknowledges_nothing(site: Site) -> None:
    delivery_id = await site.reached(await site.warn())
    # What a link previewer in a messaging app or a mail scanner does.
    for _ in range(2):
        resp = await site.client.head(link(delivery_id))
        assert resp.status == 200 and await resp.read() == b""
    assert await site.recorded(delivery_id) == (0, "delivered", None)
    for _ in range(2):
        resp = await site.client.get(link(delivery_id))
        page = await resp.text()
        assert await site.recorded(delivery_id) == (0, "delivered", None)
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "红色预警" in page and "夏溪县气象台发布暴雨红色预警" in page
        assert "请立即转移到安置点。" in page and BUTTON.search(page), page


async def test_the_button_acknowledges_once(site: Site) -> None:
    delivery_id = await site.reached(await site.warn())
    resp = await site.client.post(link(delivery_id))
    page = await resp.text()
    assert resp.status == 200 and "已确认收到" in page and not BUTTON.search(page)
    n, state, acked_at = await site.recorded(delivery_id)
    assert (n, state) == (1, "acknowledged") and acked_at is not None

    resp = await site.client.post(link(delivery_id))  # a second tap changes nothing
    assert resp.status == 200
    resp = await site.client.get(link(delivery_id))
    page = await resp.text()
    assert "您已确认收到此预警" in page and not BUTTON.search(page)
    assert (await site.recorded(delivery_id))[0] == 1


async def _cancel(site: Site, alert_id: int) -> None:
    await site.gw.alerts.cancel(ADMIN, alert_id, "雨停")


async def _expire(site: Site, alert_id: int) -> None:
    # The warning's time runs out (set in the past rather than waited for).
    async with site.store.write() as conn:
        await conn.execute(update(alerts).where(alerts.c.id == alert_id)
                           .values(expires=time.time() - 1))
    await expire_due(site.store)


@pytest.mark.parametrize(("end", "title"), [(_cancel, "预警已解除"), (_expire, "预警已过期")])
async def test_a_link_of_an_ended_warning_says_so_and_acknowledges_nothing(
    site: Site, end: Any, title: str
) -> None:
    alert_id = await site.warn()
    delivery_id = await site.reached(alert_id)
    await end(site, alert_id)
    for method in ("GET", "POST"):
        resp = await site.client.request(method, link(delivery_id))
        page = await resp.text()
        assert resp.status == 200 and title in page and not BUTTON.search(page), method
        assert "夏溪县气象台发布暴雨红色预警" in page
    assert await site.recorded(delivery_id) == (0, "delivered", None)


async def test_a_lifted_notice_has_nothing_to_confirm(site: Site) -> None:
    alert_id = await site.warn()
    await site.reached(alert_id)
    await site.gw.alerts.cancel(ADMIN, alert_id, "雨停")
    [notice] = await wait_until(site.store, select(deliveries.c.id).where(
        deliveries.c.alert_id == alert_id, deliveries.c.kind == "cancel",
        deliveries.c.role == "grid_worker").limit(1), bool)
    resp = await site.client.post(link(notice.id))
    assert "预警已解除" in await resp.text()
    assert (await site.recorded(notice.id))[:1] == (0,)


async def test_a_link_of_a_replaced_warning_says_so_and_acknowledges_nothing(
    site: Site
) -> None:
    feed = {"Authorization": "Bearer tok-feed", **CAP_HEADERS}
    body = cap_message("QX-900")
    resp = await site.client.post("/api/v1/cap", data=body, headers=feed)
    assert resp.status == 202, await resp.text()
    delivery_id = await site.reached((await resp.json())["alert_id"])
    sent = re.search(rb"<sent>([^<]*)</sent>", body)
    assert sent is not None
    ref = f"339901@qxj.example.gov.cn,QX-900,{sent.group(1).decode()}"
    resp = await site.client.post("/api/v1/cap", headers=feed, data=cap_message(
        "QX-901", msg_type="Update", references=ref))
    assert resp.status == 202, await resp.text()
    for method in ("GET", "POST"):
        resp = await site.client.request(method, link(delivery_id))
        page = await resp.text()
        assert resp.status == 200 and "预警已更新" in page and "最新" in page, method
        assert not BUTTON.search(page)
    assert await site.recorded(delivery_id) == (0, "delivered", None)


async def test_alert_texts_are_escaped(site: Site) -> None:
    headline = "<script>alert(1)</script>暴雨"
    instruction = '<img src=x onerror="alert(2)">请转移'
    delivery_id = await site.reached(await site.warn(headline, instruction))
    for method in ("GET", "POST", "GET"):
        resp = await site.client.request(method, link(delivery_id))
        page = await resp.text()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;暴雨" in page, method
        assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;请转移" in page, method
        assert "<script" not in page and "<img" not in page, method


async def test_a_token_not_ours_is_404_in_chinese(site: Site) -> None:
    delivery_id = await site.reached(await site.warn())
    good = link(delivery_id)
    for method in ("GET", "POST", "HEAD"):
        for path in (good[:-3] + "abc", "/ack/zz-zzzzzzzzzz", f"/ack/{'f' * 16}-aaaaaaaaaa",
                     link(2**62)):
            resp = await site.client.request(method, path)
            assert resp.status == 404, (method, path)
            if method != "HEAD":
                assert "链接无效" in await resp.text()
    assert await site.recorded(delivery_id) == (0, "delivered", None)


async def test_a_post_another_site_makes_is_refused(site: Site) -> None:
    delivery_id = await site.reached(await site.warn())
    resp = await site.client.post(link(delivery_id),
                                  headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    resp = await site.client.post(link(delivery_id),
                                  headers={"Referer": "https://evil.example/x"})
    assert resp.status == 403
    assert await site.recorded(delivery_id) == (0, "delivered", None)
    # Our own form under Referrer-Policy: no-referrer sends "Origin: null".
    resp = await site.client.post(link(delivery_id), headers={"Origin": "null"})
    assert resp.status == 200 and "已确认收到" in await resp.text()
    assert (await site.recorded(delivery_id))[:2] == (1, "acknowledged")
