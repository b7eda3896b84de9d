"""Field reports (issue 10, item 5) through the real Twilio adapter and its fake, on SQLite
and PostgreSQL: a reply that is not an acknowledgement becomes a field report (not a
rejected input), is forwarded to the township's duty officer by SMS with a link to the
reports, and is listed in the API to its own township only. The grid worker's follow-up
SMS carries the link to their list."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update
from warngate_twilio.testing import FakeTwilio, free_port, serving, twilio_options

from tests.gateway_run import GatewayRun
from tests.integration.test_twilio_gateway import RETRY, red_policy
from tests.smallcounty import COUNTY, write_small_county
from warngate.alerts import record_rejection
from warngate.policy import FollowupPolicy
from warngate.service import load_adapters
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
from warngate.store.schema import contacts, deliveries, field_reports, rejected_inputs
from warngate.web.app import GATEWAY, build_app

T1, T2 = f"{COUNTY}001", f"{COUNTY}002"
LINK = re.compile(r"https?://\S+/(?:f|r)/[0-9a-f]+-[a-z2-7]{10}")


@dataclass
class Running(GatewayRun):
    fake: FakeTwilio
    public_url: str
    phones: dict[str, str]
    ids: dict[str, int]

    def hook(self, leaf: str) -> str:
        return f"{self.public_url}/hooks/twilio/{leaf}"

    async def api(self, path: str, token: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(
                f"{self.public_url}{path}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return resp.status, await resp.json()

    async def page(self, url: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            return resp.status, await resp.text()


@contextlib.asynccontextmanager
async def running(store: Store, monkeypatch: pytest.MonkeyPatch,
                  fake: FakeTwilio) -> AsyncIterator[Running]:
    """Two townships of one village and one grid, two households each, bound to the grid
    worker; household 0 of township 1 has no phone."""
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", fake.auth_token)
    await write_small_county(store, townships=2, villages=1, grids=1, households=2)
    async with store.write() as conn:
        gw = contacts.alias("gw")
        await conn.execute(update(contacts).where(contacts.c.role == "household").values(
            responsible_id=select(gw.c.id).where(gw.c.role == "grid_worker",
                                                 gw.c.grid_code == contacts.c.grid_code)
            .scalar_subquery()))
        await conn.execute(update(contacts).where(
            contacts.c.external_id == f"hh-{T1}001001-0").values(phone=None))
        rows = (await conn.execute(select(contacts.c.external_id, contacts.c.phone,
                                          contacts.c.id))).all()
    url = store.engine.url.render_as_string(hide_password=False)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = Settings(
        database={"url": url},  # type: ignore[arg-type]
        http=HttpSettings(public_url=public),
        auth=AuthSettings(four_eyes=False, tokens=(
            ApiToken(name="admin", role="admin", token_sha256=hash_token("tok-admin")),
            ApiToken(name="town1", role="township", township=T1,
                     token_sha256=hash_token("tok-town1")))),
        adapters=(
            AdapterSettings(name="sms", type="twilio-sms", channel="sms", concurrency=20,
                            rate_per_second=200, retry=RETRY, options=twilio_options(fake)),
            AdapterSettings(name="voice", type="twilio-voice", channel="voice", concurrency=5,
                            rate_per_second=20, retry=RETRY, options=twilio_options(fake)),
        ),
        dispatch=DispatchSettings(idle_poll=0.02),
        escalation=EscalationSettings(sweep_every=0.1),
    )
    policy = red_policy(escalate_after=600).model_copy(
        update={"followup": FollowupPolicy(every=0.2)})
    holder: dict[str, Any] = {}

    async def keep_rejection(**kw: Any) -> int:
        return await record_rejection(holder["app"][GATEWAY].store, **kw)

    adapters = load_adapters(settings, policy, public_url=public,
                             record_rejection=keep_rejection)
    app = build_app(settings, policy, adapters)
    holder["app"] = app
    async with serving(app, port):
        yield Running(app[GATEWAY], fake, public, {r.external_id: r.phone for r in rows},
                      {r.external_id: r.id for r in rows})


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(autopilot=True) as f:
        yield f


async def test_a_reply_that_is_not_an_acknowledgement_is_a_field_report(
    store: Store, monkeypatch: pytest.MonkeyPatch, fake: FakeTwilio
) -> None:
    async with running(store, monkeypatch, fake) as run:
        alert_id = await run.warn("red", areas=(COUNTY,))
        sender = f"hh-{T1}001001-1"
        await run.until(select(deliveries.c.state).where(
            deliveries.c.contact_id == run.ids[sender]), lambda rows: bool(rows) and all(
            r.state == "delivered" for r in rows))
        for _ in range(2):  # Twilio retrying the same message: one report
            status, _ = await fake.inbound_sms(run.hook("sms/inbound"), from_=run.phones[sender],
                                               body="家里进水了，需要救援", sid="SM" + "f" * 32)
            assert status == 200
        status, _ = await fake.inbound_sms(run.hook("sms/inbound"),
                                           from_=run.phones[f"hh-{T2}001001-0"],
                                           body="桥被冲断了")
        assert status == 200
        reports = await run.until(select(field_reports).order_by(field_reports.c.id),
                                  lambda rows: len(rows) == 2)
        mine = reports[0]
        assert (mine.contact_id, mine.role, mine.township_code, mine.village_code,
                mine.alert_id, mine.source, mine.text) == (
            run.ids[sender], "household", T1, f"{T1}001", alert_id, "sms", "家里进水了，需要救援")
        assert mine.phone == run.phones[sender]
        assert reports[1].township_code == T2
        assert await run.rows(select(rejected_inputs.c.reason).where(
            rejected_inputs.c.reason.like("%not an acknowledgement%"))) == []

        # Forwarded to each township's duty officer: an SMS with the link to the reports.
        duty = f"duty-{T1}"
        await run.until(select(deliveries.c.id, deliveries.c.state).where(
            deliveries.c.kind == "report", deliveries.c.contact_id == run.ids[duty]),
            lambda rows: len(rows) == 1 and rows[0].state == "delivered")
        await run.until(select(field_reports.c.forwarded_at), lambda rows: all(
            r.forwarded_at is not None for r in rows))
        body = fake.message(run.phones[duty]).form["Body"]
        assert "现场报告" in body
        [link] = LINK.findall(body)
        assert "/r/" in link
        status, page = await run.page(link)
        assert status == 200 and "家里进水了，需要救援" in page and "桥被冲断了" not in page

        # The API: township 1's token sees township 1's report only.
        status, listed = await run.api("/api/v1/field-reports", "tok-town1")
        assert status == 200 and [r["text"] for r in listed["reports"]] == ["家里进水了，需要救援"]
        status, _ = await run.api(f"/api/v1/field-reports?township={T2}", "tok-town1")
        assert status == 403
        status, listed = await run.api(f"/api/v1/field-reports?alert={alert_id}&limit=1",
                                       "tok-admin")
        assert status == 200 and [r["text"] for r in listed["reports"]] == ["桥被冲断了"]
        status, more = await run.api(listed["next"], "tok-admin")
        assert [r["text"] for r in more["reports"]] == ["家里进水了，需要救援"]
        assert more["next"] is None


async def test_the_grid_workers_sms_links_to_their_list(
    store: Store, monkeypatch: pytest.MonkeyPatch, fake: FakeTwilio
) -> None:
    async with running(store, monkeypatch, fake) as run:
        await run.warn("red", areas=(T1,))
        worker = f"gw-{T1}001001"
        await run.until(select(deliveries.c.state).where(
            deliveries.c.kind == "followup", deliveries.c.contact_id == run.ids[worker]),
            lambda rows: len(rows) == 1 and rows[0].state == "delivered")
        body = fake.message(run.phones[worker]).form["Body"]
        assert "入户跟进" in body
        [link] = LINK.findall(body)
        assert "/f/" in link
        status, page = await run.page(link)
        assert status == 200 and "住户0" in page and "无手机" in page

        # A report from the page reaches the duty officer too.
        async with aiohttp.ClientSession() as http, http.post(link, data={
                "form": "report", "text": "三户房屋进水", "trapped": "2",
                "evacuated": "5"}) as resp:
            assert resp.status == 200 and "现场报告已提交" in await resp.text()
        [report] = await run.until(select(field_reports), lambda rows: len(rows) == 1)
        assert (report.source, report.contact_id, report.trapped, report.evacuated,
                report.township_code) == ("mobile", run.ids[worker], 2, 5, T1)
        await run.until(select(deliveries.c.id).where(
            deliveries.c.kind == "report", deliveries.c.contact_id == run.ids[f"duty-{T1}"]),
            lambda rows: len(rows) == 1)
