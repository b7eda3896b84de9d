"""CAP as real bureaus publish it, through the API, on SQLite and PostgreSQL: warnings that
end a warning, flawed areas accepted and flagged, any encoding kept byte for byte, the
national list's 12-digit region codes, identifiers that would make references ambiguous."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, update

from tests.conftest import pg_database
from tests.integration.test_api import CAP_HEADERS, Api, api_settings
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from tests.unit.test_cap_leniency import SENDER, area, cap_doc, square
from warngate.store import Store
from warngate.store.schema import alerts, regions
from warngate.web.app import build_app

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "cap"


@pytest.fixture(params=["sqlite", "postgres"])
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    """The API on a small county (county 339901, townships 339901001 and 339901002)."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'cap.db'}"
        else:
            url = await stack.enter_async_context(pg_database())
        store = await Store.open(url)
        try:
            await write_small_county(store)
            # One village with a centroid, so that a polygon can find it.
            async with store.write() as conn:
                await conn.execute(update(regions).where(regions.c.code == "339901001001")
                                   .values(lat=30.02, lon=120.02))
        finally:
            await store.close()
        app = build_app(api_settings(url, max_body=1_048_576), policy(60, 120))
        client = await stack.enter_async_context(TestClient(TestServer(app)))
        yield Api(client, url)


async def post(site: Api, data: bytes) -> tuple[int, dict[str, object]]:
    status, body = await site.call("POST", "/api/v1/cap", who="feed", data=data,
                                   headers=CAP_HEADERS)
    assert isinstance(body, dict), body
    return status, body


async def row(site: Api, alert_id: object) -> object:
    store = await Store.open(site.store_url)
    try:
        async with store.read() as conn:
            return (await conn.execute(select(alerts).where(alerts.c.id == alert_id))).one()
    finally:
        await store.close()


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def test_updates_and_cancels_ending_a_warning_replace_and_lift_it(site: Api) -> None:
    for msg_type, ended_state, ident in (("Update", "superseded", "QX-END-1"),
                                         ("Cancel", "cancelled", "QX-END-2")):
        sent = now() - timedelta(hours=1)
        status, first = await post(site, cap_doc(identifier=ident, sent=sent))
        assert status == 202 and first["state"] == "dispatching", first
        # The bureau ends it: sent now, expires at (or before) sent.
        end_at = now()
        status, end = await post(site, cap_doc(
            identifier=ident + "-end", msg_type=msg_type, sent=end_at, expires=end_at,
            references=f"{SENDER},{ident},{sent.isoformat()}"))
        assert status == 202, end
        assert end["state"] in ("expired", "cancelled")
        _, old = await site.call("GET", f"/api/v1/alerts/{first['alert_id']}")
        assert old["state"] == ended_state, (msg_type, old)


async def test_a_flawed_polygon_is_accepted_and_the_warning_kept_and_shown(site: Api) -> None:
    data = cap_doc(identifier="QX-FLAW-1", sent=now(), areas=[
        area(polygons=[square(30.0, 120.0)]),
        area("白沙街道", polygons=["30.0,120.0 30.1,120.1 30.0,120.0"]),
    ], event_codes=[("CMA-level", "红色"), ("SAME", "")])
    status, answer = await post(site, data)
    assert status == 202, answer
    want = [{"rule": "polygon-degenerate", "element": "alert/info[1]/area[2]/polygon[1]"},
            {"rule": "eventcode-odd", "element": "alert/info[1]/eventCode"}]
    warnings = answer["warnings"]
    assert isinstance(warnings, list)
    assert [{k: w[k] for k in ("rule", "element")} for w in warnings] == want
    assert all(w["message"] for w in warnings)
    # The valid polygon still selects the village whose centroid it holds.
    stored = await row(site, answer["alert_id"])
    assert stored.areas == ["339901001001"]  # type: ignore[attr-defined]
    assert stored.warnings == warnings  # type: ignore[attr-defined]
    _, shown = await site.call("GET", f"/api/v1/alerts/{answer['alert_id']}")
    assert shown["warnings"] == warnings
    _, listed = await site.call("GET", "/api/v1/alerts")
    [mine] = [a for a in listed["alerts"] if a["id"] == answer["alert_id"]]
    assert mine["warnings"] == warnings
    # A message without flaws has none.
    status, clean = await post(site, cap_doc(identifier="QX-FLAW-2", sent=now()))
    assert status == 202 and "warnings" not in clean
    _, shown = await site.call("GET", f"/api/v1/alerts/{clean['alert_id']}")
    assert shown["warnings"] == []


async def test_unusable_areas_and_ambiguous_identifiers_are_refused_and_kept(
        site: Api) -> None:
    before = len(await site.rejected())
    cases = [
        (cap_doc(identifier="QX-BAD-1", sent=now(),
                 areas=[area(polygons=["30.0,120.0 95.0,120.0 30.1,120.1 30.0,120.0"])]),
         "area-unusable"),
        (cap_doc(identifier="INVALID, ", sent=now()), "identifier-chars"),
        (cap_doc(identifier="QX-BAD-2", sent=now(), severity="Unknown",
                 event_codes=[("CMA-level", "紫色")]), "level-unknown"),
    ]
    for data, rule in cases:
        status, answer = await post(site, data)
        assert status == 400, answer
        error = answer["error"]
        assert isinstance(error, dict) and error["detail"]["rule"] == rule
    assert len(await site.rejected()) == before + len(cases)


@pytest.mark.parametrize("encoding", ["GB18030", "UTF-16"])
async def test_the_bytes_are_kept_exactly_as_received(site: Api, encoding: str) -> None:
    data = cap_doc(identifier=f"QX-ENC-{encoding}", sent=now(), encoding=encoding)
    status, answer = await post(site, data)
    assert status == 202, answer
    stored = await row(site, answer["alert_id"])
    assert stored.raw_bytes == data  # type: ignore[attr-defined]
    assert stored.raw == data.decode(encoding)  # type: ignore[attr-defined]
    assert stored.headline == "夏溪县气象台发布暴雨红色预警信号"  # type: ignore[attr-defined]


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real CAP samples not found at {SHARED}")
async def test_a_shared_sample_in_gb18030_is_kept_byte_for_byte(site: Api) -> None:
    text = (SHARED / "valid" / "cn-cma-baoding-lightning-yellow-update.xml").read_text()
    gb = text.replace('encoding="UTF-8"', 'encoding="GB18030"').replace(
        "Baoding_Meteorological_Observatory", SENDER).encode("gb18030")
    status, answer = await post(site, gb)
    assert status == 202, answer
    stored = await row(site, answer["alert_id"])
    assert stored.raw_bytes == gb  # type: ignore[attr-defined]
    assert "保定市气象台" in stored.raw  # type: ignore[attr-defined]


#: The national list's padded codes (and GB/T 2260 province/prefecture codes) → our areas.
NATIONAL_CODES = [
    (("339901001000", "339901002000"), ["339901001", "339901002"]),  # townships, padded
    (("339901000000", "339901000000"), ["339901"]),  # the county, padded
    (("339901001001", "339901001002000"), ["339901001001", "339901001002"]),  # villages
    (("339900000000", "339900"), ["339901"]),  # the prefecture holds our county
    (("330000000000", "330000"), ["339901"]),  # the province too
]


async def test_national_region_codes_reach_the_people_there(site: Api) -> None:
    # One gateway for all the cases: starting and stopping one per case is slow.
    for n, (codes, areas) in enumerate(NATIONAL_CODES):
        data = cap_doc(identifier=f"QX-CODE-{n}", sent=now(), areas=[
            area(geocodes=[("统计用区划代码", c) for c in codes])])
        status, answer = await post(site, data)
        assert status == 202, answer
        assert "unknown_areas" not in answer and "no_recipients" not in answer, codes
        recipients = answer["recipients"]
        assert isinstance(recipients, dict) and recipients.get("sms", 0) > 0, codes
        _, shown = await site.call("GET", f"/api/v1/alerts/{answer['alert_id']}")
        assert shown["areas"] == areas, codes


async def test_a_prefecture_holding_none_of_ours_is_reported_unknown(site: Api) -> None:
    status, answer = await post(site, cap_doc(identifier="QX-CODE-X", sent=now(), areas=[
        area(geocodes=[("统计用区划代码", "130600000000")])]))
    assert status == 202 and answer["unknown_areas"] == ["130600"], answer
