"""Gauge readings through the HTTP API raise, upgrade and lift alerts for the villages
downstream, without flapping; duplicates and out-of-order readings change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from tests.integration.test_api import Api, api_settings
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.settings import HydrologySettings, HydroStation
from warngate.store import Store
from warngate.store.schema import alerts, deliveries, rejected_inputs
from warngate.web.app import build_app

VILLAGES = ("339901001001", "339901001002")
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hydro.db'}"
    store = await Store.open(url)
    try:
        await write_small_county(store)
    finally:
        await store.close()
    settings = api_settings(url).model_copy(update={"hydrology": HydrologySettings(
        confirm=2, stations=(HydroStation(
            id="qx-01", name="清溪水文站", river="清溪", warning_level_m=12.0,
            guaranteed_level_m=13.5, hysteresis_m=0.2, areas=VILLAGES),))})
    app = build_app(settings, policy(step1_after=600, step2_after=1200))
    async with TestClient(TestServer(app)) as client:
        yield Api(client, url)


async def post(api: Api, *levels: float, start: int = 0) -> list[dict[str, Any]]:
    readings = [{"station": "qx-01", "level_m": lv,
                 "at": (START + timedelta(minutes=5 * (start + i))).isoformat()}
                for i, lv in enumerate(levels)]
    status, body = await api.call("POST", "/api/v1/hydrology/readings", who="feed",
                                  json={"readings": readings})
    assert status == 200, body
    return list(body["results"])


async def alert_rows(api: Api) -> list[Any]:
    store = await Store.open(api.store_url)
    try:
        async with store.read() as conn:
            return list((await conn.execute(select(
                alerts.c.id, alerts.c.msg_type, alerts.c.level, alerts.c.state,
                alerts.c.headline, alerts.c.areas).order_by(alerts.c.id))).all())
    finally:
        await store.close()


async def test_raise_upgrade_lift_without_flapping(api: Api) -> None:
    # Noise around the warning level: never two in a row above it → nothing raised.
    out = await post(api, 11.9, 12.05, 11.95, 12.02, 11.97)
    assert {r["outcome"] for r in out} == {"recorded"}
    assert await alert_rows(api) == []

    out = await post(api, 12.1, 12.2, start=5)
    assert [r["outcome"] for r in out] == ["recorded", "raised"]
    [first] = await alert_rows(api)
    assert (first.msg_type, first.level) == ("Alert", "orange")
    assert first.state in ("dispatching", "active")
    assert "超警戒水位" in first.headline and first.areas == list(VILLAGES)

    out = await post(api, 13.6, 13.7, start=7)
    assert out[-1]["outcome"] == "upgraded"
    rows = await alert_rows(api)
    assert [(r.msg_type, r.level) for r in rows] == [("Alert", "orange"), ("Update", "red")]
    assert rows[0].state == "superseded"

    # Falling, but within the hysteresis of the warning level: still an alert (orange).
    out = await post(api, 13.2, 13.1, 11.9, 11.85, start=9)
    assert [r["outcome"] for r in out] == ["recorded", "downgraded", "recorded", "recorded"]
    out = await post(api, 11.7, 11.6, start=13)
    assert out[-1]["outcome"] == "lifted"
    rows = await alert_rows(api)
    assert [r.msg_type for r in rows] == ["Alert", "Update", "Update", "Cancel"]
    assert rows[2].state == "cancelled"

    # Only the villages downstream were planned.
    store = await Store.open(api.store_url)
    try:
        async with asyncio.timeout(30):
            while True:
                async with store.read() as conn:
                    villages = set((await conn.execute(
                        select(deliveries.c.village_code).distinct()
                        .where(deliveries.c.village_code.is_not(None)))).scalars())
                if villages:
                    break
                await asyncio.sleep(0.05)
    finally:
        await store.close()
    assert villages <= set(VILLAGES)


async def test_duplicates_out_of_order_and_unknown(api: Api) -> None:
    await post(api, 12.5, 12.6)
    dup = await post(api, 12.6, start=1)
    assert dup[0]["outcome"] == "duplicate"
    late = await post(api, 14.0, start=-3)  # an old reading arriving late
    assert late[0]["outcome"] == "out_of_order"
    assert [r.level for r in await alert_rows(api)] == ["orange"]

    status, body = await api.call("POST", "/api/v1/hydrology/readings", who="feed", json={
        "readings": [{"station": "nowhere", "at": START.isoformat(), "level_m": 1.0}]})
    assert status == 200 and body["results"][0]["outcome"] == "unknown_station"
    status, body = await api.call("POST", "/api/v1/hydrology/readings", who="feed", json={
        "readings": [{"station": "qx-01", "at": "yesterday", "level_m": "high"}]})
    assert status == 400
    assert {d["field"] for d in body["error"]["detail"]} == {"readings.0.at",
                                                             "readings.0.level_m"}
    status, _ = await api.call("POST", "/api/v1/hydrology/readings", who="town1",
                               json={"readings": []})
    assert status == 403
    store = await Store.open(api.store_url)
    try:
        async with store.read() as conn:
            reasons = list((await conn.execute(select(rejected_inputs.c.reason))).scalars())
    finally:
        await store.close()
    assert any("nowhere" in r for r in reasons) and any("invalid readings" in r
                                                        for r in reasons)
