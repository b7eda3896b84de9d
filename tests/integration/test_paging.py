"""Lists page with a cursor (keyset paging), on SQLite and PostgreSQL: the alert list and the
receipts people list give ``next`` while more follow, and following it yields every row once
(issue 9, item 12). Township tokens page through their own alerts only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert

from tests.integration.test_api import api_settings
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.store import Store
from warngate.store.schema import alerts, deliveries
from warngate.web.app import build_app

TOWN1, TOWN2 = "339901001", "339901002"
N_ALERTS = 260


class Api:
    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def get(self, path: str, who: str = "admin") -> tuple[int, Any]:
        resp = await self.client.get(path, headers={"Authorization": f"Bearer tok-{who}"})
        return resp.status, await resp.json()

    async def follow(self, path: str, key: str, who: str = "admin") -> list[list[Any]]:
        """Every page from ``path`` on, by the ``next`` links."""
        pages: list[list[Any]] = []
        url: str | None = path
        while url is not None:
            status, body = await self.get(url, who)
            assert status == 200, body
            pages.append(body[key])
            url = body["next"]
            assert len(pages) < 100, "next never ends"
        return pages


async def add_alerts(store: Store) -> list[int]:
    """N_ALERTS alerts, two in three in township 1, every fifth expired."""
    now = time.time()
    rows = [{"source": "composer", "sender": "warngate:duty", "identifier": f"a-{i}",
             "sent": "2026-06-01T08:00:00+08:00", "level": "yellow", "event": "暴雨",
             "headline": f"暴雨黄色预警 {i}", "areas": [TOWN2 if i % 3 == 2 else TOWN1],
             "state": "expired" if i % 5 == 0 else "pending_approval",
             "created_by": "duty", "created_at": now, "updated_at": now, "plan_stage": 2}
            for i in range(N_ALERTS)]
    async with store.write() as conn:
        return [int(i) for i in (await conn.execute(
            insert(alerts).returning(alerts.c.id), rows)).scalars()]


@pytest.fixture
async def api(store: Store) -> AsyncIterator[tuple[Api, Store]]:
    await write_small_county(store)
    url = store.engine.url.render_as_string(hide_password=False)
    app = build_app(api_settings(url), policy(step1_after=600, step2_after=1200))
    async with TestClient(TestServer(app)) as client:
        yield Api(client), store


async def test_the_alert_list_pages_by_cursor(api: tuple[Api, Store]) -> None:
    client, store = api
    ids = await add_alerts(store)
    newest_first = sorted(ids, reverse=True)

    pages = await client.follow("/api/v1/alerts", "alerts")
    assert [len(p) for p in pages] == [200, N_ALERTS - 200]
    assert [a["id"] for p in pages for a in p] == newest_first

    pages = await client.follow("/api/v1/alerts?limit=37", "alerts")
    assert [a["id"] for p in pages for a in p] == newest_first
    assert all(len(p) == 37 for p in pages[:-1])

    # The state filter and the limit carry over into next.
    pages = await client.follow("/api/v1/alerts?state=expired&limit=10", "alerts")
    expired = [i for n, i in enumerate(ids) if n % 5 == 0]
    assert [a["id"] for p in pages for a in p] == sorted(expired, reverse=True)
    assert {a["state"] for p in pages for a in p} == {"expired"}

    # A township's token pages through its own alerts only, full pages across others'.
    pages = await client.follow("/api/v1/alerts?limit=25", "alerts", who="town1")
    mine = [i for n, i in enumerate(ids) if n % 3 != 2]
    assert [a["id"] for p in pages for a in p] == sorted(mine, reverse=True)
    assert all(len(p) == 25 for p in pages[:-1])

    # An exact fit gives no next page.
    status, body = await client.get(f"/api/v1/alerts?limit={N_ALERTS}")
    assert len(body["alerts"]) == N_ALERTS and body["next"] is None
    status, body = await client.get(f"/api/v1/alerts?after={min(ids)}")
    assert (status, body["alerts"], body["next"]) == (200, [], None)
    for bad in ("after=0", "after=x", f"after={2**63}", "limit=0", "limit=1001"):
        status, body = await client.get(f"/api/v1/alerts?{bad}")
        assert (status, body["error"]["code"]) == (400, "bad_query"), bad


async def add_deliveries(store: Store, alert_id: int) -> None:
    """Speakers and people across both townships; some at township level (no village)."""
    now = time.time()
    rows = []
    for i in range(230):
        town = TOWN1 if i % 2 else TOWN2
        village = None if i % 7 == 0 else f"{town}{1 + i % 3:03d}"
        rows.append({"alert_id": alert_id, "speaker_id": f"spk-{i}", "role": "speaker",
                     "channel": "speaker", "state": "delivered" if i % 4 else "failed",
                     "priority": 0, "due_at": now, "township_code": town,
                     "village_code": village, "created_at": now, "delivered_at": now})
    async with store.write() as conn:
        await conn.execute(insert(deliveries), rows)


async def test_the_receipts_people_list_pages_by_cursor(api: tuple[Api, Store]) -> None:
    client, store = api
    [alert_id] = (await add_alerts(store))[:1]
    await add_deliveries(store, alert_id)
    base = f"/api/v1/alerts/{alert_id}/receipts?state=delivered"

    status, whole = await client.get(f"{base}&limit=5000")
    assert status == 200 and whole["next"] is None
    everyone = [p["delivery_id"] for p in whole["people"]]
    assert len(everyone) == len(set(everyone)) > 150
    # Township-level people (no village) first in each township, on both backends.
    keys = [(p["township"], p["village"] or "", p["delivery_id"]) for p in whole["people"]]
    assert keys == sorted(keys)

    pages = await client.follow(f"{base}&limit=40", "people")
    assert [p["delivery_id"] for page in pages for p in page] == everyone
    assert [len(p) for p in pages[:-1]] == [40] * (len(pages) - 1)
    # Offset still works beside the cursor, in the same order.
    status, body = await client.get(f"{base}&limit=40&offset=40")
    assert [p["delivery_id"] for p in body["people"]] == everyone[40:80]
    assert body["next_after"] is not None

    pages = await client.follow(f"{base}&limit=30", "people", who="town1")
    town1 = [p["delivery_id"] for p in whole["people"] if p["township"] == TOWN1]
    assert [p["delivery_id"] for page in pages for p in page] == town1
    for bad in ("after=1", "after=::x", "after=a:b:0"):
        status, body = await client.get(f"{base}&{bad}")
        assert (status, body["error"]["code"]) == (400, "bad_query"), bad
