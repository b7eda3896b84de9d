"""Who a warning reaches, by policy (issue 10, items 3, 6 and 9), on each backend: the
township's duty officers for any part of their township and the county's for county-wide
warnings (``reach``); specialists chosen by hazard; roles the policy declares; people off
the roster or without a phone; drills, with households only in a community-wide one."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from tests.smallcounty import COUNTY, write_small_county
from warngate.alerts import Actor, AlertService, ComposeRequest, NewAlert
from warngate.planning import Planner, resolve_targets
from warngate.policy import Policy, load_policy
from warngate.store import Store
from warngate.store.schema import alerts, contacts, deliveries

ROOT = Path(__file__).resolve().parents[2]
T1, T2 = f"{COUNTY}001", f"{COUNTY}002"
V1 = f"{T1}001"
G1 = f"{V1}001"


def production() -> Policy:
    return load_policy(ROOT / "config" / "policy.yaml")


async def planned(store: Store, pol: Policy, areas: list[str], *, level: str = "red",
                  event: str = "暴雨", status: str = "Actual", community: bool = False
                  ) -> list[Any]:
    """Accept and plan a warning; its deliveries (contact, role, channel)."""
    accepted = await AlertService(store, pol).accept(NewAlert(
        source="test", sender="test", identifier=str(uuid.uuid4()), sent=str(time.time()),
        level=level, event=event, headline=f"{event}预警", areas=areas, created_by="test",
        status=status, community_drill=community), actor="test")
    await Planner(store, pol).plan_alert(accepted.alert_id)
    async with store.read() as conn:
        return list((await conn.execute(
            select(contacts.c.external_id, deliveries.c.role, deliveries.c.channel)
            .join(contacts, contacts.c.id == deliveries.c.contact_id)
            .where(deliveries.c.alert_id == accepted.alert_id))).all())


def who(rows: list[Any], role: str) -> set[str]:
    return {r.external_id for r in rows if r.role == role}


async def add_people(store: Store, *people: dict[str, Any]) -> None:
    async with store.write() as conn:
        await conn.execute(insert(contacts), [
            {"township_code": T1, "village_code": V1, "region_code": V1, "grid_code": None,
             **p}
            for p in people])


async def test_a_village_warning_reaches_its_townships_duty_officer(store: Store) -> None:
    await write_small_county(store)
    rows = await planned(store, production(), [V1], level="yellow")
    assert who(rows, "township_duty") == {f"duty-{T1}"}
    assert who(rows, "village_head") == {f"head-{V1}"}
    # A grid alone still touches its township; the other township hears nothing.
    rows = await planned(store, production(), [G1], level="red")
    assert who(rows, "township_duty") == {f"duty-{T1}"}
    assert {(r.role, r.channel) for r in rows if r.role == "township_duty"} == {
        ("township_duty", "sms"), ("township_duty", "voice")}
    assert not who(rows, "county_duty")


async def test_without_reach_the_township_is_not_told(store: Store) -> None:
    """reach is policy, not code: the same policy without it keeps to the area."""
    await write_small_county(store)
    data = production().model_dump()
    for lp in data["levels"].values():
        for rp in lp["roles"].values():
            rp["reach"] = "area"
    rows = await planned(store, Policy.model_validate(data), [V1], level="yellow")
    assert not who(rows, "township_duty")
    assert who(rows, "village_head") == {f"head-{V1}"}


async def test_county_duty_gets_county_wide_warnings_only(store: Store) -> None:
    await write_small_county(store)
    pol = production()
    assert who(await planned(store, pol, [COUNTY], level="blue"), "county_duty") == {
        "county-duty"}
    # Every township named is the whole county too.
    assert who(await planned(store, pol, [T1, T2], level="orange"), "county_duty") == {
        "county-duty"}
    for part in ([T1], [V1], [G1]):
        assert not who(await planned(store, pol, part), "county_duty"), part
    async with store.read() as conn:
        targets = await resolve_targets(conn, [T1, G1])
    assert (targets.counties, targets.touched_townships) == ((), (T1,))


async def test_geological_hazard_reaches_geo_monitors_and_rain_does_not(store: Store) -> None:
    await write_small_county(store)
    await add_people(
        store,
        {"external_id": "geo-1", "name": "群测群防员甲", "phone": "+8617100000001",
         "role": "geo_monitor"},
        {"external_id": "res-1", "name": "水库巡查员甲", "phone": "+8617100000002",
         "role": "reservoir_patroller"})
    pol = production()
    rows = await planned(store, pol, [V1], event="地质灾害气象风险预警", level="orange")
    assert who(rows, "geo_monitor") == {"geo-1"}
    assert not who(rows, "reservoir_patroller")
    assert who(rows, "grid_worker")  # the level's roles still come
    rows = await planned(store, pol, [V1], event="暴雨", level="orange")
    assert not who(rows, "geo_monitor") and not who(rows, "reservoir_patroller")
    rows = await planned(store, pol, [V1], event="Reservoir overflow", level="blue")
    assert who(rows, "reservoir_patroller") == {"res-1"} and not who(rows, "geo_monitor")


async def test_a_declared_role_is_planned_by_its_entry(store: Store) -> None:
    await write_small_county(store)
    await add_people(store, {"external_id": "ferry-1", "name": "渡口管理员",
                             "phone": "+8617100000003", "role": "ferry_keeper"})
    data = production().model_dump()
    data["roles"] = {"ferry_keeper": {"label": "渡口管理员", "aliases": ["渡管员"]}}
    data["levels"]["yellow"]["roles"]["ferry_keeper"] = {"channels": ["sms", "voice"]}
    pol = Policy.model_validate(data)
    assert pol.role_label("ferry_keeper") == "渡口管理员"
    rows = await planned(store, pol, [T1], level="yellow")
    assert {(r.external_id, r.channel) for r in rows if r.role == "ferry_keeper"} == {
        ("ferry-1", "sms"), ("ferry-1", "voice")}


async def test_inactive_and_phoneless_contacts_get_no_message(store: Store) -> None:
    await write_small_county(store)
    await add_people(store, {"external_id": "hh-nophone", "name": "孤寡老人",
                             "phone": None, "role": "household", "region_code": G1,
                             "grid_code": G1})
    async with store.write() as conn:
        await conn.execute(update(contacts).where(contacts.c.external_id == f"head-{V1}")
                           .values(active=False))
    rows = await planned(store, production(), [V1])
    assert "hh-nophone" not in who(rows, "household")
    assert who(rows, "household")  # the others with phones are planned
    assert not who(rows, "village_head")
    async with store.read() as conn:
        blank = (await conn.execute(select(deliveries.c.id).join(
            contacts, contacts.c.id == deliveries.c.contact_id)
            .where(contacts.c.phone.is_(None)))).all()
    assert blank == []


async def test_community_drill_reaches_households_and_an_ordinary_drill_does_not(
        store: Store) -> None:
    await write_small_county(store)
    pol = production()
    ordinary = await planned(store, pol, [V1], status="Exercise")
    assert {r.role for r in ordinary} == {"township_duty"}
    community = await planned(store, pol, [V1], status="Exercise", community=True)
    assert {r.role for r in community} == {
        "township_duty", "village_head", "grid_worker", "household"}
    assert len(who(community, "household")) == 8
    # A policy without community roles keeps a community drill like any other drill.
    data = pol.model_dump()
    data["drills"]["community"] = {"roles": []}
    bare = await planned(store, Policy.model_validate(data), [V1], status="Test",
                         community=True)
    assert {r.role for r in bare} == {"township_duty"}


async def test_a_composed_drill_may_be_community_wide(store: Store) -> None:
    await write_small_county(store)
    pol = production()
    service = AlertService(store, pol, four_eyes=False)
    admin = Actor("admin", "admin")
    drill = await service.compose(admin, ComposeRequest(
        level="yellow", event="防汛演练", headline="全民防汛演练", areas=[V1],
        status="Exercise", community_drill=True))
    # The estimate answered to the composer counts the households already.
    assert drill.recipients["sms"] == len(
        await planned(store, pol, [V1], level="yellow", status="Exercise", community=True))
    actual = await service.compose(admin, ComposeRequest(
        level="yellow", event="暴雨", headline="暴雨黄色预警", areas=[V1],
        community_drill=True))
    async with store.read() as conn:
        flags = dict((await conn.execute(
            select(alerts.c.id, alerts.c.community_drill)
            .where(alerts.c.id.in_([drill.alert_id, actual.alert_id])))).all())
    # An Actual warning is no drill, whatever the form says.
    assert flags == {drill.alert_id: True, actual.alert_id: False}
