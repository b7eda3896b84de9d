"""24-hour duty rosters (issue 10 item 7), on each backend: who is on shift goes first, the
region's other duty officers are the next escalation step of an on-shift officer who does
not answer, handovers are recorded; the CLI and ``GET /api/v1/duty``."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert, select, update

from tests.integration.test_api import api_settings
from tests.integration.test_pipeline import policy as pipeline_policy
from tests.smallcounty import write_small_county
from warngate import duty
from warngate.alerts import AlertService, NewAlert
from warngate.escalation import escalate_due
from warngate.planning import Planner, priority_of
from warngate.policy import Policy
from warngate.store import Store
from warngate.store.schema import audit_log, contacts, deliveries, duty_shifts
from warngate.web.app import build_app

ROOT = Path(__file__).resolve().parents[2]
T1 = "339901001"
HOUR = 3600.0


def policy() -> Policy:
    duty_steps = {"channels": ["sms"], "ack": {"required": True, "within": 600},
                  "escalation": [{"after": 60, "channel": "voice"},
                                 {"after": 120, "channel": "voice", "to": "duty"},
                                 {"after": 180, "channel": "voice", "to": "supervisor"}]}
    return Policy.model_validate({"levels": {
        **{lvl: {"roles": {"grid_worker": {"channels": ["sms"]}}}
           for lvl in ("blue", "yellow", "orange")},
        "red": {"roles": {"township_duty": duty_steps, "grid_worker": {"channels": ["sms"]}}},
    }})


async def officers(store: Store, n: int = 3) -> dict[str, int]:
    """T1's duty officer from the small county plus ``n`` more of T1; ids by external id."""
    async with store.write() as conn:
        if n:
            await conn.execute(insert(contacts), [
                {"external_id": f"duty-{T1}-{i}", "name": f"值班员{i}",
                 "phone": f"+861390000000{i}", "role": "township_duty", "region_code": T1,
                 "township_code": T1}
                for i in range(2, 2 + n)])
        return dict((await conn.execute(select(contacts.c.external_id, contacts.c.id).where(
            contacts.c.role.in_(duty.DUTY_ROLES)))).all())


async def test_who_is_on_shift_goes_first(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    p = await officers(store, 1)
    now = time.time()
    await duty.add_shifts(store, [duty.Shift(T1, f"duty-{T1}-2", now - HOUR, now + HOUR),
                                  duty.Shift(T1, f"duty-{T1}", now - 3 * HOUR, now - HOUR)],
                          actor="test")
    base = priority_of("red", "township_duty")
    async with store.read() as conn:
        got = dict((await conn.execute(select(
            contacts.c.external_id,
            duty.duty_priority(base, contacts.c.id, contacts.c.role, now))
            .where(contacts.c.role.in_(["township_duty", "grid_worker"])))).all())
    # The officer on shift one better than the others; an ended shift counts for nothing.
    assert got == {f"duty-{T1}-2": base - 1, f"duty-{T1}": base,
                   "gw-339901001001001": base}
    assert p[f"duty-{T1}-2"] != p[f"duty-{T1}"]


async def test_the_other_duty_officers_are_the_next_step(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    p = await officers(store, 3)
    on, also_on = p[f"duty-{T1}"], p[f"duty-{T1}-2"]
    off = {p[f"duty-{T1}-3"], p[f"duty-{T1}-4"]}
    now = time.time()
    await duty.add_shifts(store, [duty.Shift(T1, f"duty-{T1}", now - HOUR, now + HOUR),
                                  duty.Shift(T1, f"duty-{T1}-2", now - HOUR, now + HOUR)],
                          actor="test")
    pol = policy()
    accepted = await AlertService(store, pol).accept(NewAlert(
        source="test", sender="test", identifier=str(uuid.uuid4()), sent=str(now),
        level="red", event="暴雨", headline="暴雨红色预警", areas=[T1], created_by="test"),
        actor="test")
    await Planner(store, pol).plan_alert(accepted.alert_id)
    async with store.write() as conn:  # everyone but the officer on shift answered
        await conn.execute(update(deliveries).where(deliveries.c.contact_id != on)
                           .values(acked_at=now, acked_how="self", escalate_at=None))

    async def sweep() -> list[Any]:
        async with store.write() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.escalate_at.is_not(None))
                               .values(escalate_at=time.time() - 1))
        await escalate_due(store, pol)
        async with store.read() as conn:
            return list((await conn.execute(
                select(deliveries.c.step, deliveries.c.contact_id, deliveries.c.on_behalf_of,
                       deliveries.c.escalate_at.is_not(None).label("carries"))
                .where(deliveries.c.step == select(deliveries.c.step).order_by(
                    deliveries.c.step.desc()).limit(1).scalar_subquery()))).all())

    assert [(r.contact_id, r.on_behalf_of) for r in await sweep()] == [(on, None)]
    # Step 2: every other duty officer of the township not on shift, about the one on shift;
    # the one also on shift is not called, and only one row carries the chain on.
    step2 = await sweep()
    assert {(r.step, r.contact_id, r.on_behalf_of) for r in step2} == {
        (2, c, on) for c in off}
    assert sorted(r.carries for r in step2) == [False, True]
    assert also_on not in {r.contact_id for r in step2}
    # Step 3, once: the supervisor (the county's officer), not once per colleague.
    step3 = await sweep()
    assert [(r.step, r.contact_id, r.on_behalf_of) for r in step3] == [
        (3, p["county-duty"], on)]


async def test_a_duty_step_without_colleagues_calls_the_supervisor(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    p = await officers(store, 0)
    pol = policy()
    accepted = await AlertService(store, pol).accept(NewAlert(
        source="test", sender="test", identifier=str(uuid.uuid4()), sent=str(time.time()),
        level="red", event="暴雨", headline="暴雨红色预警", areas=[T1], created_by="test"),
        actor="test")
    await Planner(store, pol).plan_alert(accepted.alert_id)
    for _ in range(2):
        async with store.write() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.escalate_at.is_not(None))
                               .values(escalate_at=time.time() - 1))
        await escalate_due(store, pol)
    async with store.read() as conn:
        rows = (await conn.execute(select(deliveries.c.contact_id, deliveries.c.on_behalf_of)
                                   .where(deliveries.c.step == 2))).all()
    assert [tuple(r) for r in rows] == [(p["county-duty"], p[f"duty-{T1}"])]


async def test_handover_is_recorded(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    p = await officers(store, 1)
    now = time.time()
    await duty.add_shifts(store, [duty.Shift(T1, f"duty-{T1}", now - HOUR, now + 5 * HOUR)],
                          actor="test")
    new_id = await duty.handover(store, region=T1, to=f"duty-{T1}-2", note="水库水位偏高，注意巡查",
                                 by="镇值班员1", now=now)
    async with store.read() as conn:
        shifts = (await conn.execute(select(duty_shifts).order_by(duty_shifts.c.id))).all()
        audit = (await conn.execute(select(audit_log).where(
            audit_log.c.action == "duty_handover"))).one()
        running = await duty.on_duty(conn, region="339901", now=now + 1)
    assert [(s.contact_id, s.starts_at, s.ends_at) for s in shifts] == [
        (p[f"duty-{T1}"], now - HOUR, now), (p[f"duty-{T1}-2"], now, now + 5 * HOUR)]
    assert (shifts[1].id, shifts[1].handed_over_by, shifts[1].handover_note) == (
        new_id, "镇值班员1", "水库水位偏高，注意巡查")
    assert audit.actor == "镇值班员1" and audit.detail["to"] == f"duty-{T1}-2"
    assert audit.detail["ended_shifts"] == [shifts[0].id]
    assert [(r["external_id"], r["handed_over_by"]) for r in running] == [
        (f"duty-{T1}-2", "镇值班员1")]
    assert running[0]["phone"] == "+86139****0002"
    with pytest.raises(duty.DutyError, match="不是 339901001 的值班人员"):
        await duty.handover(store, region=T1, to="head-339901001001", note="", by="x")


async def test_shifts_are_refused_with_every_reason(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    now = time.time()
    with pytest.raises(duty.DutyError) as refused:
        await duty.add_shifts(store, [
            duty.Shift("339999999", f"duty-{T1}", now, now + HOUR),
            duty.Shift(T1, "nobody", now, now + HOUR),
            duty.Shift(T1, f"duty-{T1}", now, now - HOUR)], actor="test")
    assert [m.split("：")[0] for m in str(refused.value).split("；")] == [
        "第1行", "第2行", "第3行"]
    async with store.read() as conn:
        assert (await conn.execute(select(duty_shifts))).all() == []


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warngate", "duty", *args, "--database", url],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


async def test_the_duty_commands(store: Store, tmp_path: Path) -> None:
    await write_small_county(store, townships=2, villages=1, grids=1, households=1)
    url = store.engine.url.render_as_string(hide_password=False)
    roster = tmp_path / "值班表.csv"
    # As a township saves it from a spreadsheet: a title row, Chinese headers, GBK.
    roster.write_bytes("2026年汛期值班表\n区域编码,值班人,开始,结束\n"
                       "339901002,duty-339901002,2020-01-01T08:00,2099-01-01T08:00\n"
                       .encode("gbk"))
    done = _cli(url, "import", str(roster))
    assert done.returncode == 0, done.stderr
    done = _cli(url, "add", "--region", T1, "--contact", f"duty-{T1}",
                "--from", "2020-01-01 08:00", "--to", "2099-01-01T08:00+08:00")
    assert done.returncode == 0, done.stderr
    done = _cli(url, "now", "--region", "339901")
    assert done.returncode == 0 and done.stdout.count("\n") == 2, done.stdout
    assert "镇值班员1" in done.stdout and "镇值班员2" in done.stdout
    done = _cli(url, "add", "--region", T1, "--contact", "head-339901001001",
                "--from", "2020-01-01T08:00", "--to", "2099-01-01T08:00")
    assert done.returncode == 1 and "不是 339901001 的值班人员" in done.stderr
    done = _cli(url, "handover", "--region", T1, "--to", "county-duty", "--note", "x",
                "--by", "镇值班员1")
    assert done.returncode == 1 and "error:" in done.stderr


async def test_the_duty_api(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    store = await Store.open(url)
    try:
        await write_small_county(store)
        now = time.time()
        await duty.add_shifts(store, [
            duty.Shift("339901001", "duty-339901001", now - HOUR, now + HOUR),
            duty.Shift("339901002", "duty-339901002", now - HOUR, now + HOUR),
            duty.Shift("339901", "county-duty", now - HOUR, now + HOUR)], actor="test")
    finally:
        await store.close()
    app = build_app(api_settings(url), pipeline_policy(step1_after=60, step2_after=120))
    async with TestClient(TestServer(app)) as client:
        async def get(path: str, who: str | None) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer tok-{who}"} if who else {}
            resp = await client.get(path, headers=headers)
            return resp.status, await resp.json()

        status, body = await get("/api/v1/duty", "duty")
        assert status == 200
        assert [s["region_code"] for s in body["shifts"]] == ["339901", "339901001",
                                                              "339901002"]
        assert body["shifts"][1]["name"] == "镇值班员1" and "****" in body["shifts"][1]["phone"]
        status, body = await get("/api/v1/duty?region=339901002", "duty")
        assert [s["external_id"] for s in body["shifts"]] == ["duty-339901002"]
        # A township's token: its own township only.
        status, body = await get("/api/v1/duty", "town1")
        assert [s["region_code"] for s in body["shifts"]] == ["339901001"]
        status, body = await get("/api/v1/duty?region=339901002", "town1")
        assert (status, body["error"]["code"]) == (403, "outside_township")
        status, body = await get("/api/v1/duty?region=x'--", "duty")
        assert (status, body["error"]["code"]) == (400, "bad_query")
        status, _ = await get("/api/v1/duty", None)
        assert status == 401


async def test_planning_sends_the_officer_on_shift_first(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    await officers(store, 1)
    now = time.time()
    await duty.add_shifts(store, [duty.Shift(T1, f"duty-{T1}-2", now - HOUR, now + HOUR)],
                          actor="test")
    pol = policy()
    accepted = await AlertService(store, pol).accept(NewAlert(
        source="test", sender="test", identifier=str(uuid.uuid4()), sent=str(now),
        level="red", event="暴雨", headline="暴雨红色预警", areas=[T1], created_by="test"),
        actor="test")
    await Planner(store, pol).plan_alert(accepted.alert_id)
    async with store.read() as conn:
        got = dict((await conn.execute(
            select(contacts.c.external_id, deliveries.c.priority)
            .join(contacts, contacts.c.id == deliveries.c.contact_id)
            .where(deliveries.c.alert_id == accepted.alert_id,
                   deliveries.c.role == "township_duty"))).all())
    assert got[f"duty-{T1}-2"] < got[f"duty-{T1}"]
