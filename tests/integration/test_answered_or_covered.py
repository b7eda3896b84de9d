"""Who acknowledged, and how (issue 10, item 1), on SQLite and PostgreSQL.

Only a person's own answer (reply, key press, link) counts as "answered"; a supervisor
called about them, staff recording a call or a visit, or their grid worker answering for
them makes them "covered". Boards, the people lists and the API keep the two apart, list
people once, and keep the time each person took to answer themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert, select

from tests.gateway_run import wait_until
from tests.integration.test_ack_link import Site, link, open_site
from warngate.delivery import new_row
from warngate.store import Store
from warngate.store.schema import acknowledgements, audit_log, contacts, deliveries


@pytest.fixture
async def site(store: Store) -> AsyncIterator[Site]:
    async with open_site(store) as s:
        yield s


async def _first_grid_worker(site: Site, alert_id: int) -> Any:
    await site.reached(alert_id)
    [row] = await wait_until(site.store, select(
        deliveries.c.id, deliveries.c.contact_id, deliveries.c.township_code,
        deliveries.c.village_code, deliveries.c.grid_code, contacts.c.external_id,
        contacts.c.supervisor_id, contacts.c.phone,
    ).join(contacts, contacts.c.id == deliveries.c.contact_id).where(
        deliveries.c.alert_id == alert_id, deliveries.c.role == "grid_worker",
        deliveries.c.state == "delivered").order_by(deliveries.c.id).limit(1), bool)
    return row


async def _people(site: Site, alert_id: int, state: str, token: str = "tok-admin"
                  ) -> tuple[int, Any]:
    resp = await site.client.get(f"/api/v1/alerts/{alert_id}/receipts?state={state}",
                                 headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json()


async def _counts(site: Site, alert_id: int) -> dict[str, int]:
    await site.gw.receipts.flush()
    site.gw.store.forget_shared()  # the board is shared for a second: read it afresh
    resp = await site.client.get(f"/api/v1/alerts/{alert_id}/receipts",
                                 headers={"Authorization": "Bearer tok-admin"})
    got = (await resp.json())["acknowledgement"]
    return {k: got[k] for k in ("answered", "covered", "silent")}


async def test_a_supervisors_answer_covers_the_person_and_their_own_answer_counts_later(
    site: Site,
) -> None:
    alert_id = await site.warn()
    gw = await _first_grid_worker(site, alert_id)
    before = await _counts(site, alert_id)
    assert before["answered"] == 0 and before["covered"] == 0 and before["silent"] > 0
    # The grid worker did not answer; their village head was called about them and answered.
    async with site.store.write() as conn:
        supervisor_row = (await conn.execute(insert(deliveries).values(new_row(
            alert_id=alert_id, contact_id=gw.supervisor_id, on_behalf_of=gw.contact_id,
            role="village_head", channel="voice", step=2, priority=1, due_at=0.0,
            ack_required=True, township_code=gw.township_code, village_code=gw.village_code,
            grid_code=gw.grid_code, created_at=0.0, state="planned",
        )).returning(deliveries.c.id))).scalar_one()
    site.gw.receipts.acknowledge(delivery_id=supervisor_row, via="dtmf")
    after = await _counts(site, alert_id)
    assert (after["answered"], after["covered"]) == (0, 1)
    assert after["silent"] == before["silent"] - 1

    status, body = await _people(site, alert_id, "covered")
    assert status == 200
    [person] = body["people"]
    assert person["person_id"] == gw.contact_id and person["answered_at"] is None
    assert [(a["by"], a["via"]) for a in person["answers"]] == [("supervisor", "dtmf")]
    assert person["seconds_to_answer"] is None

    # The person's own link still takes their confirmation, and now they answered.
    page = await (await site.client.get(link(gw.id))).text()
    assert "确认收到" in page and "您已确认收到此预警" not in page
    await site.client.post(link(gw.id))
    final = await _counts(site, alert_id)
    assert (final["answered"], final["covered"]) == (1, 0)
    status, body = await _people(site, alert_id, "answered")
    [person] = body["people"]
    assert [a["by"] for a in person["answers"]] == ["supervisor", "self"]
    assert person["answered_at"] is not None and person["seconds_to_answer"] >= 0


async def test_staff_record_a_call_for_a_person_audited_and_scoped(site: Site) -> None:
    alert_id = await site.warn()
    gw = await _first_grid_worker(site, alert_id)
    url = f"/api/v1/alerts/{alert_id}/acknowledgements"
    body = {"person": gw.external_id, "by": "staff", "via": "call", "note": "电话已通知本人"}
    # Another township's staff may not; a viewer-less feed token may not at all.
    resp = await site.client.post(url, json={**body}, headers={
        "Authorization": "Bearer tok-feed"})
    assert resp.status == 403
    resp = await site.client.post(url, json={"person": "nobody-here"},
                                  headers={"Authorization": "Bearer tok-duty"})
    assert resp.status == 404 and "nobody-here" in (await resp.json())["error"]["message"]
    resp = await site.client.post(url, json={**body, "by": "ghost"},
                                  headers={"Authorization": "Bearer tok-duty"})
    assert resp.status == 400

    resp = await site.client.post(url, json=body, headers={"Authorization": "Bearer tok-town1"})
    done = await resp.json()
    assert resp.status == 201 and done["status"] == "covered", done
    counts = await _counts(site, alert_id)
    assert counts["covered"] == 1 and counts["answered"] == 0
    async with site.store.read() as conn:
        ack = (await conn.execute(select(acknowledgements).where(
            acknowledgements.c.person_id == gw.contact_id))).one()
        audit = (await conn.execute(select(audit_log).where(
            audit_log.c.action == "ack_for"))).one()
    assert (ack.answered_by, ack.actor, ack.note, ack.via) == (
        "staff", "town1", "电话已通知本人", "call")
    assert audit.actor == "town1" and audit.detail["person_id"] == gw.contact_id

    # The silent list holds people, each once (not their deliveries), and not this one.
    status, body = await _people(site, alert_id, "unacknowledged")
    assert status == 200
    ids = [p["person_id"] for p in body["people"]]
    assert len(ids) == len(set(ids)) and gw.contact_id not in ids
    assert len(ids) == counts["silent"]


async def test_a_supervisors_own_answer_does_not_answer_the_calls_about_their_people(
    site: Site,
) -> None:
    alert_id = await site.warn()
    gw = await _first_grid_worker(site, alert_id)
    async with site.store.write() as conn:
        about_gw = (await conn.execute(insert(deliveries).values(new_row(
            alert_id=alert_id, contact_id=gw.supervisor_id, on_behalf_of=gw.contact_id,
            role="village_head", channel="voice", step=2, priority=1, due_at=0.0,
            ack_required=True, township_code=gw.township_code, village_code=gw.village_code,
            grid_code=gw.grid_code, created_at=0.0, escalate_at=2e9,
        )).returning(deliveries.c.id))).scalar_one()
    [own] = await wait_until(site.store, select(deliveries.c.id).where(
        deliveries.c.alert_id == alert_id, deliveries.c.contact_id == gw.supervisor_id,
        deliveries.c.on_behalf_of.is_(None), deliveries.c.state == "delivered"), bool)
    site.gw.receipts.acknowledge(delivery_id=own.id, via="link")
    await site.gw.receipts.flush()
    async with site.store.read() as conn:
        row = (await conn.execute(select(deliveries.c.acked_at, deliveries.c.escalate_at)
                                  .where(deliveries.c.id == about_gw))).one()
        mine = (await conn.execute(select(deliveries.c.acked_how)
                                   .where(deliveries.c.id == own.id))).scalar_one()
    assert mine == "self"
    # The grid worker still has not answered: the call about them stands.
    assert (row.acked_at, row.escalate_at) == (None, 2e9)
