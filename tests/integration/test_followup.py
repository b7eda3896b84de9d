"""Households followed up through their bound grid worker (issue 10, item 4), on SQLite and
PostgreSQL: a household whose messages failed, one without a phone and a vulnerable one go
on their grid worker's list once, however many passes run; the grid worker's page shows
them and records what they found; the township reads the list and the evacuation counts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select, update

from tests.gateway_run import ADMIN, TOWNSHIP, wait_until
from tests.integration.test_api import ACK_KEY, api_settings
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.acktoken import make_token
from warngate.alerts import Actor, ComposeRequest
from warngate.followup import follow_up
from warngate.policy import FollowupPolicy, Policy
from warngate.service import Gateway
from warngate.settings import AdapterSettings
from warngate.sim import SimOptions
from warngate.store import Store
from warngate.store.schema import audit_log, contacts, deliveries, followups, rejected_inputs
from warngate.web.app import GATEWAY, build_app

APPROVER = Actor("approver", "approver")
G1 = f"{TOWNSHIP}001001"  # grid 1 of village 1 of township 1
UNREACHABLE = 1e-4  # the simulated SMS provider's share of numbers that never receive


def unreachable_phone() -> str:
    """A number the simulated provider never delivers to (every other number is reached)."""
    sim = SimOptions(unreachable_rate=UNREACHABLE)
    return next(p for n in range(10**6) if not sim.reaches(p := f"+86171{n:08d}"))


def followup_policy(every: float = 3600.0) -> Policy:
    return policy(step1_after=600, step2_after=1200).model_copy(
        update={"followup": FollowupPolicy(levels=("orange", "red"), every=every)})


async def bind_households(store: Store) -> dict[str, int]:
    """Every household bound to its grid's worker; in grid 1: household 0 has no phone,
    household 1 is vulnerable, household 2's number is never reached."""
    await write_small_county(store)
    async with store.write() as conn:
        ids = dict((await conn.execute(select(contacts.c.external_id, contacts.c.id))).all())
        gw = contacts.alias("gw")
        await conn.execute(update(contacts).where(contacts.c.role == "household").values(
            responsible_id=select(gw.c.id).where(gw.c.role == "grid_worker",
                                                 gw.c.grid_code == contacts.c.grid_code)
            .scalar_subquery(),
            address="夏溪县" + contacts.c.external_id + "号"))
        await conn.execute(update(contacts).where(contacts.c.external_id == f"hh-{G1}-0")
                           .values(phone=None))
        await conn.execute(update(contacts).where(contacts.c.external_id == f"hh-{G1}-1")
                           .values(vulnerable=True, vulnerable_reason="独居老人"))
        await conn.execute(update(contacts).where(contacts.c.external_id == f"hh-{G1}-2")
                           .values(phone=unreachable_phone()))
        phones = (await conn.execute(select(contacts.c.phone).where(
            contacts.c.phone.is_not(None)))).scalars().all()
    sim = SimOptions(unreachable_rate=UNREACHABLE)
    assert sum(not sim.reaches(p) for p in phones) == 1, "only household 2 is unreachable"
    return ids


@dataclass
class Site:
    client: TestClient[Any, Any]
    gw: Gateway
    store: Store
    ids: dict[str, int]

    async def warn(self, level: str = "red") -> int:
        accepted = await self.gw.alerts.compose(ADMIN, ComposeRequest(
            level=level, event="台风", headline="夏溪县发布台风红色预警",  # type: ignore[arg-type]
            description="台风将于今夜登陆。", instruction="请立即转移到安置点。",
            areas=[TOWNSHIP]))
        await self.gw.alerts.approve(APPROVER, accepted.alert_id)
        return accepted.alert_id

    async def listed(self, alert_id: int) -> list[tuple[str, str, int | None]]:
        async with self.store.read() as conn:
            rows = (await conn.execute(
                select(contacts.c.external_id, followups.c.reason, followups.c.grid_worker_id)
                .join(contacts, contacts.c.id == followups.c.household_id)
                .where(followups.c.alert_id == alert_id)
                .order_by(contacts.c.external_id))).all()
        return [tuple(r) for r in rows]  # type: ignore[misc]


@contextlib.asynccontextmanager
async def open_site(store: Store, *, every: float = 3600.0) -> AsyncIterator[Site]:
    ids = await bind_households(store)
    url = store.engine.url.render_as_string(hide_password=False)
    settings = api_settings(url)
    adapters = tuple(
        a.model_copy(update={"options": {**a.options, "unreachable_rate": UNREACHABLE}})
        if a.channel == "sms" else a for a in settings.adapters)
    settings = settings.model_copy(update={"adapters": adapters})
    assert all(isinstance(a, AdapterSettings) for a in settings.adapters)
    app = build_app(settings, followup_policy(every))
    async with TestClient(TestServer(app)) as client:
        yield Site(client, app[GATEWAY], store, ids)


def page(delivery_id: int) -> str:
    return f"/f/{make_token(ACK_KEY.encode(), delivery_id)}"


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer tok-{name}"}


async def _count(store: Store, table: Any, *where: Any) -> int:
    async with store.read() as conn:
        return int((await conn.execute(
            select(func.count()).select_from(table).where(*where))).scalar_one())


async def _outcomes(store: Store) -> list[tuple[Any, ...]]:
    async with store.read() as conn:
        return [tuple(r) for r in (await conn.execute(
            select(followups.c.id, followups.c.outcome, followups.c.people_moved,
                   followups.c.outcome_at).order_by(followups.c.id))).all()]


async def test_failed_phoneless_and_vulnerable_households_reach_their_grid_worker(
    store: Store,
) -> None:
    async with open_site(store) as site:
        alert_id = await site.warn()
        failed = site.ids[f"hh-{G1}-2"]
        await wait_until(store, select(deliveries.c.state).where(
            deliveries.c.alert_id == alert_id, deliveries.c.contact_id == failed),
            lambda rows: [r.state for r in rows] == ["failed"])

        first = await follow_up(store, site.gw.policy)
        again = await follow_up(store, site.gw.policy)
        worker = site.ids[f"gw-{G1}"]
        assert await site.listed(alert_id) == [
            (f"hh-{G1}-0", "no_phone", worker), (f"hh-{G1}-1", "vulnerable", worker),
            (f"hh-{G1}-2", "failed", worker)]
        assert (first.listed, first.notified) == (3, 1)
        assert (again.listed, again.notified) == (0, 0)
        # One message to the grid worker, with a link (the lane attaches it).
        [msg] = await wait_until(store, select(
            deliveries.c.id, deliveries.c.contact_id, deliveries.c.ack_required,
            deliveries.c.state, deliveries.c.channel).where(
            deliveries.c.alert_id == alert_id, deliveries.c.kind == "followup"),
            lambda rows: len(rows) == 1 and rows[0].state == "delivered")
        assert (msg.contact_id, msg.ack_required, msg.channel) == (worker, True, "sms")

        # Opening the page (and a link previewer's HEAD) shows the list and records nothing.
        audits = await _count(store, audit_log)
        before = await _outcomes(store)
        resp = await site.client.head(page(msg.id))
        assert resp.status == 200 and await resp.read() == b""
        resp = await site.client.get(page(msg.id))
        text = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "入户跟进名单" in text and "住户0" in text and "无手机" in text
        assert "重点关注（独居老人）" in text and "短信未送达" in text
        assert f"夏溪县hh-{G1}-1号" in text
        async with store.read() as conn:
            phone = (await conn.execute(select(contacts.c.phone).where(
                contacts.c.id == site.ids[f"hh-{G1}-1"]))).scalar_one()
        assert f'href="tel:{phone}"' in text  # the full number: the grid worker calls
        assert await _outcomes(store) == before and await _count(store, audit_log) == audits

        # The grid worker records household 0 moved to the shelter, three people.
        [fid] = [r.id for r in await wait_until(store, select(followups.c.id).where(
            followups.c.household_id == site.ids[f"hh-{G1}-0"]), bool)]
        resp = await site.client.post(page(msg.id), data={
            "form": "outcome", "followup": str(fid), "outcome": "evacuated", "people": "3"})
        assert resp.status == 200 and "已记录" in await resp.text()
        async with store.read() as conn:
            row = (await conn.execute(select(followups).where(followups.c.id == fid))).one()
            audit = (await conn.execute(select(audit_log).where(
                audit_log.c.action == "followup"))).one()
        assert (row.outcome, row.people_moved, row.recorded_by) == (
            "evacuated", 3, f"grid_worker:{worker}")
        assert row.outcome_at is not None
        assert audit.actor == f"grid_worker:{worker}" and audit.alert_id == alert_id
        assert audit.detail["household_id"] == site.ids[f"hh-{G1}-0"]

        # Evacuated without a head count is refused, and the refusal kept.
        resp = await site.client.post(page(msg.id), data={
            "form": "outcome", "followup": str(fid), "outcome": "evacuated"})
        assert resp.status == 400 and "转移人数" in await resp.text()
        assert await _count(store, rejected_inputs,
                            rejected_inputs.c.reason.like("follow-up form refused%")) == 1

        # The township sees the list and the counts.
        resp = await site.client.get(f"/api/v1/alerts/{alert_id}/evacuation",
                                     headers=auth("town1"))
        counts = await resp.json()
        assert resp.status == 200, counts
        assert counts["totals"] == {"households": 3, "open": 2, "informed": 0,
                                    "evacuated": 1, "refused": 0, "not_found": 0,
                                    "people_moved": 3}
        [town] = counts["townships"]
        assert town["township"] == TOWNSHIP
        assert town["villages"][0]["village"] == G1[:12]
        resp = await site.client.get(f"/api/v1/alerts/{alert_id}/followups?limit=2",
                                     headers=auth("town1"))
        body = await resp.json()
        assert resp.status == 200 and len(body["followups"]) == 2 and body["next"]
        resp = await site.client.get(body["next"], headers=auth("town1"))
        rest = await resp.json()
        assert [f["household"] for f in body["followups"] + rest["followups"]] == [
            "住户0", "住户1", "住户2"] and rest["next"] is None
        resp = await site.client.get(
            f"/api/v1/alerts/{alert_id}/followups?township={TOWNSHIP[:-1]}2",
            headers=auth("town1"))
        assert resp.status == 403

        # A third pass lists nobody again and sends no second message.
        assert (await follow_up(store, site.gw.policy)).listed == 0
        assert await _count(store, deliveries, deliveries.c.kind == "followup") == 1


async def test_a_forged_or_wrong_link_is_refused_in_chinese_and_kept(store: Store) -> None:
    async with open_site(store) as site:
        alert_id = await site.warn()
        [d] = await wait_until(store, select(deliveries.c.id).where(
            deliveries.c.alert_id == alert_id, deliveries.c.kind == "alert").limit(1), bool)
        token = make_token(ACK_KEY.encode(), d.id)
        forged = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
        # A forged token, and a true token of a message that is not a follow-up list.
        for path in (f"/f/{forged}", f"/f/{token}", "/f/zz", f"/r/{token}"):
            resp = await site.client.get(path)
            assert resp.status == 404 and "链接无效" in await resp.text(), path
        resp = await site.client.post(f"/f/{forged}", data={
            "form": "outcome", "followup": "1", "outcome": "informed"})
        assert resp.status == 404 and "链接无效" in await resp.text()
        async with store.read() as conn:
            kept = (await conn.execute(select(rejected_inputs.c.entry_point,
                                              rejected_inputs.c.reason))).all()
        assert sorted(kept) == sorted([
            ("GET /f/<token>", "follow-up link token invalid")] * 3 + [
            ("GET /r/<token>", "field-report link token invalid"),
            ("POST /f/<token>", "follow-up link token invalid")])
        assert all(token not in e for e, _ in kept)


async def test_the_gateway_makes_the_lists_by_itself(store: Store) -> None:
    async with open_site(store, every=0.2) as site:
        alert_id = await site.warn()
        rows = await wait_until(store, select(followups.c.household_id).where(
            followups.c.alert_id == alert_id), lambda rows: len(rows) == 3)
        assert {r.household_id for r in rows} == {site.ids[f"hh-{G1}-{h}"] for h in range(3)}
        # A message for each pass that found new households of theirs (the failure comes
        # later than the others), all to the grid worker.
        sent = await wait_until(store, select(deliveries.c.contact_id).where(
            deliveries.c.kind == "followup"), bool)
        assert {r.contact_id for r in sent} == {site.ids[f"gw-{G1}"]}


async def test_a_yellow_warning_makes_no_list(store: Store) -> None:
    async with open_site(store) as site:
        accepted = await site.gw.alerts.compose(ADMIN, ComposeRequest(
            level="yellow", event="暴雨", headline="暴雨黄色预警",  # type: ignore[arg-type]
            areas=[TOWNSHIP]))
        await site.gw.alerts.approve(APPROVER, accepted.alert_id)
        assert (await follow_up(store, site.gw.policy)).listed == 0

