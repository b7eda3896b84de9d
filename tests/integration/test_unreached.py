"""A warning that matches nobody is never silent (issue 9, item 10): a WARNING in the log, a
metric, and the county duty officers told at once over the policy's channels."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from tests.gateway_run import wait_until
from tests.integration.test_pipeline import policy, settings
from tests.smallcounty import COUNTY, write_small_county
from warngate.alerts import NewAlert
from warngate.metrics import render_metrics
from warngate.service import Gateway, load_adapters
from warngate.store import Store
from warngate.store.schema import alerts, contacts, deliveries


async def test_a_warning_that_reaches_nobody_raises_the_alarm(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    await write_small_county(store)
    url = store.engine.url.render_as_string(hide_password=False)
    s = settings(url, sms_ack=0.0, voice_ack=0.0)
    pol = policy()
    caplog.set_level(logging.WARNING, logger="warngate.planning")
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        accepted = await gw.alerts.accept(NewAlert(
            source="cap", sender="339901@qxj.example.gov.cn", identifier="QX-404",
            sent="2026-12-02T08:00:00+08:00", level="red", event="暴雨",
            headline="夏溪县气象台发布暴雨红色预警",
            # A village code of this county that the registry does not have.
            areas=[f"{COUNTY}999999"], created_by="feed"), actor="feed")
        told = await wait_until(
            store,
            select(deliveries.c.contact_id, deliveries.c.kind, deliveries.c.channel,
                   deliveries.c.state).where(deliveries.c.alert_id == accepted.alert_id),
            lambda rows: bool(rows) and all(r.state == "delivered" for r in rows))
        metrics = await render_metrics(gw)
    async with store.read() as conn:
        duty = set((await conn.execute(
            select(contacts.c.id).where(contacts.c.role == "county_duty"))).scalars())
        alert = (await conn.execute(
            select(alerts).where(alerts.c.id == accepted.alert_id))).one()
    assert duty, "the small county has a county duty officer"
    assert {r.contact_id for r in told} == duty
    assert {(r.kind, r.channel) for r in told} == {("nobody", "sms")}
    assert alert.no_recipients and alert.planned_count == 0
    assert any("matched no recipient" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert "warngate_alerts_unreached 1" in metrics
