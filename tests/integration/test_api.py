"""The HTTP API as a client sees it: authentication, roles, township scope, validation,
size limits, acknowledgement links, receipts — every rejection answered and kept."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import String, func, select

from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.acktoken import make_token
from warngate.policy import Policy
from warngate.settings import (
    AdapterSettings,
    ApiToken,
    AuthSettings,
    DispatchSettings,
    EscalationSettings,
    HttpSettings,
    Settings,
    hash_token,
)
from warngate.store import Store
from warngate.store.schema import audit_log, deliveries, rejected_inputs
from warngate.web.app import build_app

ACK_KEY = "test-ack-key"
TOKENS = {
    "admin": ("admin", None),
    "duty": ("duty_officer", None),
    "approver": ("approver", None),
    "town1": ("township", "339901001"),
    "feed": ("feed", None),
}


@dataclass
class Api:
    client: TestClient[Any, Any]
    store_url: str

    async def call(self, method: str, path: str, who: str | None = "admin",
                   **kw: Any) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if who:
            headers["Authorization"] = f"Bearer tok-{who}"
        resp = await self.client.request(method, path, headers=headers, **kw)
        body = await (resp.json() if resp.content_type == "application/json" else resp.text())
        return resp.status, body

    async def rejected(self) -> list[Any]:
        store = await Store.open(self.store_url)
        try:
            async with store.read() as conn:
                return list((await conn.execute(
                    select(rejected_inputs).order_by(rejected_inputs.c.id))).all())
        finally:
            await store.close()


def api_settings(url: str, *, max_body: int = 65536) -> Settings:
    return Settings(
        database={"url": url},  # type: ignore[arg-type]
        http=HttpSettings(public_url="http://gw.test", max_body_bytes=max_body),
        auth=AuthSettings(four_eyes=True, tokens=tuple(
            ApiToken(name=name, role=role, township=town,  # type: ignore[arg-type]
                     token_sha256=hash_token(f"tok-{name}"),
                     senders=("339901@qxj.example.gov.cn",) if role == "feed" else ())
            for name, (role, town) in TOKENS.items())),
        adapters=(
            AdapterSettings(name="sms", type="sim-sms", channel="sms", rate_per_second=5000,
                            options={"ack_probability": 0.0}),
            AdapterSettings(name="voice", type="sim-voice", channel="voice",
                            rate_per_second=5000, options={"ack_probability": 0.0}),
            AdapterSettings(name="speaker", type="sim-speaker", channel="speaker",
                            rate_per_second=5000),
        ),
        dispatch=DispatchSettings(idle_poll=0.02),
        escalation=EscalationSettings(sweep_every=0.1),
        ack_key=ACK_KEY,  # type: ignore[arg-type]
    )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    store = await Store.open(url)
    try:
        await write_small_county(store)
    finally:
        await store.close()
    pol: Policy = policy(step1_after=60, step2_after=120)
    app = build_app(api_settings(url, max_body=4096), pol)
    async with TestClient(TestServer(app)) as client:
        yield Api(client, url)


async def test_bad_ids_queries_and_cancel_bodies_are_4xx_with_the_reason(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/alerts", json=RED, who="duty")
    alert_id = body["alert_id"]
    receipts = f"/api/v1/alerts/{alert_id}/receipts"
    for path, code in [(f"/api/v1/alerts/{2**64}", 404), ("/api/v1/alerts/0", 404),
                       (f"{receipts}?state=weird", 400), (f"{receipts}?state=sent&limit=-5", 400),
                       (f"{receipts}?state=sent&limit=abc", 400),
                       (f"{receipts}?state=sent&offset=-1", 400),
                       ("/api/v1/alerts?state=gone", 400)]:
        status, body = await api.call("GET", path)
        assert status == code, (path, body)
        if code == 400:
            assert body["error"]["code"] == "bad_query" and "must be" in body["error"]["message"]
    status, body = await api.call("GET", f"{receipts}?state=unacknowledged&limit=5000")
    assert status == 200 and body["limit"] == 5000

    # A cancel whose body is not {"reason": ...} cancels nothing and is kept.
    for bad in ([1], {"reason": 3}, {"reson": "雨停"}):
        status, body = await api.call("POST", f"/api/v1/alerts/{alert_id}/cancel", json=bad)
        assert (status, body["error"]["code"]) == (400, "invalid_cancel"), bad
    status, body = await api.call("GET", f"/api/v1/alerts/{alert_id}")
    assert body["state"] == "pending_approval"
    assert [r.reason.split(":")[0] for r in await api.rejected()] == ["invalid cancel"] * 3
    status, body = await api.call("POST", f"/api/v1/alerts/{alert_id}/cancel",
                                  json={"reason": "雨停"})
    assert (status, body["state"]) == (200, "cancelled")
    status, body = await api.call("POST", f"/api/v1/alerts/{2**64}/cancel")
    assert status == 404


async def test_input_that_meets_a_bug_is_answered_500_and_kept(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    app = build_app(api_settings(url), policy())

    async def buggy(request: web.Request) -> web.Response:
        await request.read()
        raise KeyError("a bug")

    app.router.add_post("/api/v1/buggy", buggy)  # stands in for a handler with a bug
    async with TestClient(TestServer(app)) as client:
        api = Api(client, url)
        status, body = await api.call("POST", "/api/v1/buggy", data="暴雨红色预警".encode())
    assert (status, body["error"]["code"]) == (500, "internal")
    [row] = await api.rejected()
    assert row.entry_point == "POST /api/v1/buggy"
    assert row.reason.startswith("internal error: KeyError")
    assert row.body.decode() == "暴雨红色预警"


RED = {"level": "red", "event": "暴雨", "headline": "暴雨红色预警", "areas": ["339901001"],
       "description": "过去3小时降雨量已达100毫米以上。", "instruction": "请立即转移。"}


async def test_every_api_route_wants_a_token(api: Api) -> None:
    for method, path in (("GET", "/api/v1/alerts"), ("POST", "/api/v1/alerts"),
                         ("GET", "/api/v1/alerts/1/receipts"), ("POST", "/api/v1/cap"),
                         ("GET", "/metrics")):
        status, body = await api.call(method, path, who=None)
        assert status == 401, path
        assert body["error"]["code"] == "unauthorized"
    status, _ = await api.call("GET", "/api/v1/alerts", who=None,
                               headers={"Authorization": "Bearer not-a-token"})
    assert status == 401
    status, body = await api.call("GET", "/healthz", who=None)
    assert status == 200 and body["database"] == "ok"


async def test_compose_approve_and_see_receipts(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/alerts", who="duty", json=RED)
    assert status == 201, body
    alert_id = body["alert_id"]
    assert body["state"] == "pending_approval"
    assert body["recipients"] == {"sms": 34, "speaker": 3}

    # Four eyes: the composer cannot approve; a feed token cannot either.
    status, body = await api.call("POST", f"/api/v1/alerts/{alert_id}/approve", who="duty")
    assert (status, body["error"]["code"]) == (403, "four_eyes")
    status, _ = await api.call("POST", f"/api/v1/alerts/{alert_id}/approve", who="feed")
    assert status == 403
    status, body = await api.call("POST", f"/api/v1/alerts/{alert_id}/approve", who="approver")
    assert status == 200 and body["state"] == "dispatching"
    status, body = await api.call("POST", f"/api/v1/alerts/{alert_id}/approve", who="approver")
    assert (status, body["error"]["code"]) == (409, "wrong_state")

    async with asyncio.timeout(30):
        while True:
            status, board = await api.call("GET", f"/api/v1/alerts/{alert_id}/receipts")
            assert status == 200
            sms = board["totals"].get("sms", {})
            if sms.get("delivered", 0) == 34:
                break
            await asyncio.sleep(0.05)
    town = board["townships"][0]
    assert town["code"] == "339901001" and town["name"] == "第1镇"
    # Township-level people (the duty officer) sit outside any village.
    assert [v["code"] for v in town["villages"]] == [
        None, *(f"339901001{v:03d}" for v in (1, 2, 3))]

    status, people = await api.call(
        "GET", f"/api/v1/alerts/{alert_id}/receipts?state=delivered&limit=5")
    assert status == 200 and len(people["people"]) == 5
    for person in people["people"]:
        # Phone numbers are masked in every answer.
        assert re.fullmatch(r"\+86\d{3}\*+\d{2,4}", person["phone"]), person["phone"]

    store = await Store.open(api.store_url)
    try:
        async with store.read() as conn:
            actions = [(r.actor, r.action) for r in (await conn.execute(
                select(audit_log.c.actor, audit_log.c.action).order_by(audit_log.c.id))).all()]
    finally:
        await store.close()
    assert ("duty", "compose") in actions and ("approver", "approve") in actions


async def test_township_user_sees_only_its_township(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/alerts", json={
        **RED, "areas": ["339901002"]})
    assert status == 201
    other = body["alert_id"]
    status, body = await api.call("POST", "/api/v1/alerts", json=RED)
    mine = body["alert_id"]

    status, body = await api.call("GET", "/api/v1/alerts", who="town1")
    assert status == 200
    assert [a["id"] for a in body["alerts"]] == [mine]
    status, body = await api.call("GET", f"/api/v1/alerts/{other}/receipts", who="town1")
    assert status == 404
    status, body = await api.call(
        "GET", f"/api/v1/alerts/{mine}/receipts?township=339901002", who="town1")
    assert (status, body["error"]["code"]) == (403, "outside_township")
    status, body = await api.call("POST", f"/api/v1/alerts/{other}/cancel", who="town1",
                                  json={"reason": "x"})
    assert status == 403


@pytest.mark.parametrize(("payload", "code", "field"), [
    ({**RED, "level": "purple"}, "invalid_alert", "level"),
    ({**RED, "areas": []}, "invalid_alert", "areas"),
    ({**RED, "headline": ""}, "invalid_alert", "headline"),
    ({**RED, "expires": "2020-01-01T00:00:00+08:00"}, "invalid_alert", "expires"),
    ({**RED, "expires": "2099-01-01T00:00:00"}, "invalid_alert", "expires"),
    ({**RED, "colour": "red"}, "invalid_alert", "colour"),
    ({**RED, "areas": ["339901001", "339999999"]}, "unknown_region", None),
])
async def test_invalid_alerts_are_refused_and_kept(
    api: Api, payload: dict[str, Any], code: str, field: str | None
) -> None:
    status, body = await api.call("POST", "/api/v1/alerts", who="duty", json=payload)
    assert status == 400, body
    assert body["error"]["code"] == code
    if field:
        assert field in [d["field"] for d in body["error"]["detail"]]
    else:
        assert body["error"]["detail"] == ["339999999"]
    [row] = await api.rejected()
    assert row.entry_point == "POST /api/v1/alerts" and row.source == "duty"
    assert row.body is not None and json.loads(row.body)["event"] == "暴雨"


async def test_not_json_and_too_large_are_refused_and_kept(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/alerts", data=b"\xff{level: red",
                                  headers={"Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (400, "bad_json")
    status, body = await api.call("POST", "/api/v1/alerts", data=b"x" * 10_000,
                                  headers={"Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (413, "too_large")
    rows = await api.rejected()
    assert [r.reason.split(":")[0] for r in rows] == ["not JSON", "body too large"]


async def test_ack_link_acknowledges_once(api: Api) -> None:
    _, body = await api.call("POST", "/api/v1/alerts", who="duty", json=RED)
    alert_id = body["alert_id"]
    await api.call("POST", f"/api/v1/alerts/{alert_id}/approve", who="approver")
    store = await Store.open(api.store_url)
    try:
        async with asyncio.timeout(30):
            while True:
                async with store.read() as conn:
                    row = (await conn.execute(
                        select(deliveries.c.id)
                        .where(deliveries.c.role == "grid_worker",
                               deliveries.c.state == "delivered").limit(1))).first()
                if row is not None:
                    break
                await asyncio.sleep(0.05)
        path = f"/ack/{make_token(ACK_KEY.encode(), row.id)}"
        resp = await api.client.post(path)  # the page's "确认收到" button
        text = await resp.text()
        assert resp.status == 200 and "已确认收到" in text and "暴雨红色预警" in text
        resp = await api.client.post(path)  # a second tap changes nothing
        assert resp.status == 200
        resp = await api.client.get(path[:-3] + "abc")
        assert resp.status == 404 and "链接无效" in await resp.text()
        async with store.read() as conn:
            state = (await conn.execute(select(deliveries.c.state).where(
                deliveries.c.id == row.id))).scalar_one()
            n_acks = (await conn.execute(
                select(func.count()).select_from(deliveries).where(
                    deliveries.c.state == "acknowledged",
                    deliveries.c.role != "speaker"))).scalar_one()
    finally:
        await store.close()
    assert state == "acknowledged" and n_acks == 1


# -- CAP push -------------------------------------------------------------------------------

def cap_message(identifier: str = "QX-1", *, msg_type: str = "Alert",
                references: str | None = None, areas: tuple[str, str] = (
                    "339901001", "339901002")) -> bytes:
    from datetime import UTC, datetime, timedelta

    from warngate.demo import demo_cap

    now = datetime.now(UTC)
    xml = demo_cap(now).decode()
    xml = re.sub(r"<identifier>[^<]*</identifier>", f"<identifier>{identifier}</identifier>",
                 xml)
    xml = xml.replace(f"<value>{'339901001'}</value>", f"<value>{areas[0]}</value>")
    xml = xml.replace(f"<value>{'339901002'}</value>", f"<value>{areas[1]}</value>")
    if msg_type != "Alert":
        later = (now + timedelta(seconds=1)).isoformat(timespec="seconds")
        xml = re.sub(r"<sent>[^<]*</sent>", f"<sent>{later}</sent>", xml)
        xml = xml.replace("<msgType>Alert</msgType>", f"<msgType>{msg_type}</msgType>")
        xml = xml.replace("<scope>Public</scope>",
                          f"<scope>Public</scope>\n  <references>{references}</references>")
    return xml.encode()


CAP_HEADERS = {"Content-Type": "application/cap+xml"}


async def test_cap_push_is_accepted_once(api: Api) -> None:
    body = cap_message("QX-100")
    status, first = await api.call("POST", "/api/v1/cap", who="feed", data=body,
                                   headers=CAP_HEADERS)
    assert status == 202, first
    assert first["state"] == "dispatching" and first["recipients"]["sms"] > 0
    status, again = await api.call("POST", "/api/v1/cap", who="feed", data=body,
                                   headers=CAP_HEADERS)
    assert status == 200 and again["alert_id"] == first["alert_id"]
    status, alert = await api.call("GET", f"/api/v1/alerts/{first['alert_id']}")
    assert alert["level"] == "red" and alert["areas"] == ["339901001", "339901002"]
    # A duty officer's token may not push CAP; a township token neither.
    status, _ = await api.call("POST", "/api/v1/cap", who="duty", data=body,
                               headers=CAP_HEADERS)
    assert status == 403


async def test_cap_cancel_follows_references(api: Api) -> None:
    body = cap_message("QX-200")
    _, first = await api.call("POST", "/api/v1/cap", who="feed", data=body,
                              headers=CAP_HEADERS)
    sent = re.search(rb"<sent>([^<]*)</sent>", body)
    assert sent is not None
    ref = f"339901@qxj.example.gov.cn,QX-200,{sent.group(1).decode()}"
    status, cancel = await api.call(
        "POST", "/api/v1/cap", who="feed", headers=CAP_HEADERS,
        data=cap_message("QX-201", msg_type="Cancel", references=ref))
    assert status == 202, cancel
    _, alert = await api.call("GET", f"/api/v1/alerts/{first['alert_id']}")
    assert alert["state"] == "cancelled"


async def test_cap_update_narrowing_the_area_lifts_it_for_those_left_out(api: Api) -> None:
    body = cap_message("QX-300")  # both townships
    _, first = await api.call("POST", "/api/v1/cap", who="feed", data=body,
                              headers=CAP_HEADERS)
    old = first["alert_id"]
    store = await Store.open(api.store_url)
    try:
        out = select(deliveries.c.state).where(deliveries.c.alert_id == old)
        async with asyncio.timeout(30):
            while True:
                async with store.read() as conn:
                    states = set((await conn.execute(out)).scalars())
                if states and not states & {"planned", "sending", "retry"}:
                    break
                await asyncio.sleep(0.05)
        sent = re.search(rb"<sent>([^<]*)</sent>", body)
        assert sent is not None
        ref = f"339901@qxj.example.gov.cn,QX-300,{sent.group(1).decode()}"
        status, update = await api.call(
            "POST", "/api/v1/cap", who="feed", headers=CAP_HEADERS,
            data=cap_message("QX-301", msg_type="Update", references=ref,
                             areas=("339901001", "339901001")))
        assert status == 202, update
        q = (select(deliveries.c.alert_id, deliveries.c.kind, deliveries.c.township_code,
                    func.count())
             .group_by(deliveries.c.alert_id, deliveries.c.kind, deliveries.c.township_code))
        async with store.read() as conn:
            got = {(a, k, t): n for a, k, t, n in (await conn.execute(q)).all()}
            reached_in_2 = (await conn.execute(
                select(func.count(func.distinct(func.coalesce(
                    func.cast(deliveries.c.contact_id, String), deliveries.c.speaker_id))))
                .where(deliveries.c.alert_id == old, deliveries.c.township_code == "339901002",
                       deliveries.c.kind == "alert",
                       deliveries.c.state.in_(("sent", "delivered", "acknowledged"))))
            ).scalar_one()
    finally:
        await store.close()
    # Township 2 is no longer warned: everyone reached there is told it is lifted;
    # township 1 is told by the update itself.
    assert got[(old, "cancel", "339901002")] == reached_in_2 > 0
    assert (old, "cancel", "339901001") not in got
    new_alert = update["alert_id"]
    assert {t for (a, k, t) in got if a == new_alert} == {"339901001"}
    assert {k for (a, k, t) in got if a == new_alert} == {"update"}


async def test_bad_cap_is_refused_with_the_reason_and_kept(api: Api) -> None:
    cases = [
        (b"<alert", 400, "xml-syntax"),
        (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
         b"<a>&x;</a>", 400, "dtd-forbidden"),
        (cap_message("QX-300").replace(b"339901@qxj", b"999999@evil"), 403, None),
        (cap_message("QX-301").replace(b"<scope>Public</scope>", b""), 400, "schema"),
        (b"<x>" + b"a" * 5000 + b"</x>", 413, None),
    ]
    for body, status_wanted, rule in cases:
        status, answer = await api.call("POST", "/api/v1/cap", who="feed", data=body,
                                        headers=CAP_HEADERS)
        assert status == status_wanted, answer
        if rule:
            assert answer["error"]["detail"]["rule"] == rule
    rows = await api.rejected()
    assert len(rows) == len(cases)
    assert all(r.entry_point == "POST /api/v1/cap" and r.reason for r in rows)


async def test_cap_for_unknown_regions_is_kept_with_no_recipients(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/cap", who="feed", headers=CAP_HEADERS,
                                  data=cap_message("QX-400", areas=("339999999", "339999998")))
    assert status == 202, body
    assert body["unknown_areas"] == ["339999999", "339999998"]
    assert body["no_recipients"] is True
    async with asyncio.timeout(30):
        while True:
            _, alert = await api.call("GET", f"/api/v1/alerts/{body['alert_id']}")
            if alert["state"] == "active":
                break
            await asyncio.sleep(0.05)
    # Shown to the duty officer as "no recipients", not dropped.
    assert alert["no_recipients"] is True and alert["planned"] == 0


async def test_metrics_count_alerts_and_rejections(api: Api) -> None:
    await api.call("POST", "/api/v1/alerts", who="duty", json=RED)
    await api.call("POST", "/api/v1/alerts", who="duty", json={**RED, "level": "purple"})
    status, text = await api.call("GET", "/metrics")
    assert status == 200
    assert 'warngate_alerts{state="pending_approval"} 1' in text
    assert "warngate_rejected_inputs 1" in text


SHARED_CAP = Path(__file__).resolve().parents[3] / "shared" / "data" / "cap"


@pytest.mark.skipif(not SHARED_CAP.is_dir(), reason=f"real CAP samples not at {SHARED_CAP}")
async def test_signatures_are_verified_for_trusted_senders(tmp_path: Path) -> None:
    from tests.unit.test_cap_signature import embedded_pem
    from warngate.settings import CapSettings, CapTrust

    good = (SHARED_CAP / "valid" / "sc-seychelles-strong-winds-signed.xml").read_bytes()
    ipaws = (SHARED_CAP / "valid" / "us-ipaws-local-area-emergency-polygon.xml").read_bytes()
    tampered = (SHARED_CAP / "signature-tampered" / "sc-seychelles-invalid-digest.xml"
                ).read_bytes()
    certs = []
    for name, data in (("sc", good), ("ipaws", ipaws)):
        path = tmp_path / f"{name}.pem"
        path.write_text(embedded_pem(data), encoding="ascii")
        certs.append(path)
    sc_sender = parse_sender(good)
    url = f"sqlite+aiosqlite:///{tmp_path / 'sig.db'}"
    settings = api_settings(url, max_body=1_048_576).model_copy(update={"cap": CapSettings(
        trust=(CapTrust(sender=sc_sender, certificates=(certs[0],)),
               CapTrust(sender=parse_sender(ipaws), certificates=(certs[1],))))})
    app = build_app(settings, policy())
    async with TestClient(TestServer(app)) as client:
        api = Api(client, url)
        status, body = await api.call("POST", "/api/v1/cap", data=tampered,
                                      headers=CAP_HEADERS)
        assert status == 400 and body["error"]["detail"]["rule"] == "signature-invalid"
        status, body = await api.call("POST", "/api/v1/cap", data=ipaws, headers=CAP_HEADERS)
        assert status == 202, body
        store = await Store.open(url)
        try:
            async with store.read() as conn:
                detail = (await conn.execute(
                    select(audit_log.c.detail).where(audit_log.c.action == "ingest")
                )).scalar_one()
        finally:
            await store.close()
    assert detail["signature"] == "verified"


def parse_sender(data: bytes) -> str:
    m = re.search(rb"<(?:\w+:)?sender>([^<]+)</", data)
    assert m is not None
    return m.group(1).decode()
