"""Escalation that says what it is for (issue 10 item 2), on each backend: the supervisor's
call names who did not answer; ``ack.within`` is enforced; people whose escalation ran out
are alarmed to their township's and county's duty officers once; unanswered lists are
people, not deliveries."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from tests.smallcounty import write_small_county
from warngate.adapter import Outbound
from warngate.alerts import AlertService, NewAlert
from warngate.dispatch import Lane
from warngate.escalation import escalate_due
from warngate.planning import Planner
from warngate.policy import Policy
from warngate.settings import AdapterSettings, DispatchSettings
from warngate.silent import silent_people
from warngate.sim import SimSmsAdapter, SimVoiceAdapter
from warngate.store import Store
from warngate.store.schema import contacts, deliveries

T1 = "339901001"
STEPS = [{"after": 60, "channel": "voice"},
         {"after": 120, "channel": "voice", "to": "supervisor"}]


def policy(within: float = 300) -> Policy:
    responsible = {"channels": ["sms"], "ack": {"required": True, "within": within},
                   "escalation": STEPS}
    return Policy.model_validate({
        "levels": {
            **{lvl: {"roles": {"grid_worker": {"channels": ["sms"]}}}
               for lvl in ("blue", "yellow", "orange")},
            "red": {"roles": {"township_duty": responsible, "village_head": responsible,
                              "grid_worker": responsible, "household": {"channels": ["sms"]}}},
        },
    })


async def warned(store: Store, pol: Policy) -> int:
    accepted = await AlertService(store, pol).accept(NewAlert(
        source="test", sender="test", identifier=str(uuid.uuid4()), sent=str(time.time()),
        level="red", event="暴雨", headline="暴雨红色预警", areas=[T1], created_by="test"),
        actor="test")
    await Planner(store, pol).plan_alert(accepted.alert_id)
    return accepted.alert_id


async def overdue(store: Store) -> None:
    async with store.write() as conn:
        await conn.execute(update(deliveries).where(deliveries.c.escalate_at.is_not(None))
                           .values(escalate_at=time.time() - 1))


async def ids(store: Store) -> dict[str, int]:
    async with store.read() as conn:
        return dict((await conn.execute(select(contacts.c.external_id, contacts.c.id))).all())


async def answered(store: Store, alert_id: int, person: int) -> None:
    """``person`` (or someone for them) answered: every row about them is settled."""
    async with store.write() as conn:
        await conn.execute(update(deliveries).where(
            deliveries.c.alert_id == alert_id,
            or_(and_(deliveries.c.contact_id == person, deliveries.c.on_behalf_of.is_(None)),
                deliveries.c.on_behalf_of == person))
            .values(acked_at=time.time(), acked_how="self", escalate_at=None))


async def rendered(store: Store, channel: str) -> list[Outbound]:
    """What the ``channel`` lane would send now, rendered by the lane itself."""
    settings = AdapterSettings(name=channel, type=f"sim-{channel}", channel=channel)
    adapter = SimVoiceAdapter(settings) if channel == "voice" else SimSmsAdapter(settings)
    lane = Lane(store, adapter, settings, DispatchSettings(batch_size=1000),
                ack_url=lambda d: f"/ack/{d}")
    return await lane.claim_batch()


async def rows(store: Store, *where: Any) -> list[Any]:
    async with store.read() as conn:
        return list((await conn.execute(select(deliveries).where(*where)
                                        .order_by(deliveries.c.id))).all())


async def test_the_supervisors_call_names_who_did_not_answer(store: Store) -> None:
    await write_small_county(store, townships=1, villages=2, grids=1, households=1)
    pol = policy()
    await warned(store, pol)
    p = await ids(store)
    await overdue(store)
    assert await escalate_due(store, pol) == 5
    await rendered(store, "voice")  # step 1: calls to the people themselves, sent
    await overdue(store)
    assert await escalate_due(store, pol) == 5
    calls = {m.delivery_id: m for m in await rendered(store, "voice")}
    step2 = await rows(store, deliveries.c.step == 2)
    assert {r.id for r in step2} == set(calls)
    about_gw = next(calls[r.id] for r in step2 if r.on_behalf_of == p["gw-339901001001001"])
    # To the village head, about the grid worker: who, which village, what to do.
    assert about_gw.address == "+8617000000011"
    assert "网格员网格员01001" in about_gw.text and "（第1镇1村）" in about_gw.text
    assert "未确认收到暴雨红色预警" in about_gw.text and "督促" in about_gw.text
    about_duty = next(calls[r.id] for r in step2 if r.on_behalf_of == p["duty-339901001"])
    assert "乡镇值班镇值班员1" in about_duty.text and "村" not in about_duty.text.split("未")[0]
    assert about_gw.ack_required and about_gw.ack_url


async def test_within_is_the_deadline_after_the_last_step(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    pol = policy(within=300)
    alert_id = await warned(store, pol)
    p = await ids(store)
    for _ in range(2):
        await overdue(store)
        assert await escalate_due(store, pol) == 3
    # The last step (at 120 s) waits until within (300 s after the first message).
    last = await rows(store, deliveries.c.step == 2)
    assert {round(r.escalate_at - r.created_at, 3) for r in last} == {180.0}
    assert await silent_people(store, alert_id, only_exhausted=True) == []

    await answered(store, alert_id, p["head-339901001001"])
    await overdue(store)
    assert await escalate_due(store, pol) == 0  # no step after the last
    silent = await silent_people(store, alert_id, only_exhausted=True)
    assert {s["id"] for s in silent} == {p["duty-339901001"], p["gw-339901001001001"]}
    marked = await rows(store, deliveries.c.silent_at.is_not(None))
    assert len(marked) == 2 and all(r.step == 2 and r.escalate_at is None for r in marked)

    # A deadline before the last step: the person is silent as soon as that step is due.
    assert policy(within=60).levels["red"].roles["grid_worker"].ack.within == 60


async def test_a_deadline_no_later_than_the_last_step_ends_with_it(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    pol = policy(within=90)
    await warned(store, pol)
    for _ in range(2):
        await overdue(store)
        await escalate_due(store, pol)
    last = await rows(store, deliveries.c.step == 2)
    assert {round(r.escalate_at - r.created_at, 3) for r in last} == {0.0}


async def test_exhausted_escalation_alarms_township_and_county_duty_once(
        store: Store) -> None:
    await write_small_county(store, townships=2, villages=3, grids=3, households=1)
    pol = policy()
    alert_id = await warned(store, pol)
    p = await ids(store)
    await answered(store, alert_id, p["duty-339901001"])  # the township's officer answers
    for _ in range(2):
        await overdue(store)
        await escalate_due(store, pol)
    async with store.write() as conn:  # everything so far went out
        await conn.execute(update(deliveries).where(deliveries.c.state == "planned")
                           .values(state="sent"))
    await overdue(store)
    assert await escalate_due(store, pol) == 0
    alarms = await rows(store, deliveries.c.kind == "silent")
    # One per alert and township, to the township's duty officer and the county's.
    assert sorted((r.contact_id, r.township_code, r.channel) for r in alarms) == sorted([
        (p["duty-339901001"], T1, "sms"), (p["county-duty"], T1, "sms")])
    assert all(r.alert_id == alert_id and r.priority == 0 for r in alarms)

    # Swept again, and again after more deadlines: never the same people twice.
    await overdue(store)
    assert await escalate_due(store, pol) == 0
    assert len(await rows(store, deliveries.c.kind == "silent")) == 2

    texts = {m.address: m.text for m in await rendered(store, "sms")}
    to_duty = texts["+8617000000010"]
    assert to_duty == texts["+8617000000001"]
    # 3 village heads and 9 grid workers did not answer: 8 named, then "等12人".
    assert "经逐级叫应仍未确认" in to_duty and "等12人" in to_duty
    assert "村居负责人村长1001（第1镇1村）" in to_duty
    assert to_duty.split("：")[1].split("等")[0].count("、") == 7


async def test_no_supervisor_to_call_is_silent_at_once(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    p = await ids(store)
    async with store.write() as conn:
        await conn.execute(update(contacts).where(contacts.c.id == p["gw-339901001001001"])
                           .values(supervisor_id=None))
    pol = policy()
    alert_id = await warned(store, pol)
    for _ in range(2):
        await overdue(store)
        await escalate_due(store, pol)
    silent = await silent_people(store, alert_id, only_exhausted=True)
    assert [s["id"] for s in silent] == [p["gw-339901001001001"]]
    alarms = await rows(store, deliveries.c.kind == "silent")
    assert {r.contact_id for r in alarms} == {p["duty-339901001"], p["county-duty"]}


async def test_silent_people_are_people_not_deliveries(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    pol = policy()
    alert_id = await warned(store, pol)
    p = await ids(store)
    for _ in range(2):
        await overdue(store)
        await escalate_due(store, pol)
    gw = p["gw-339901001001001"]
    async with store.read() as conn:
        about_gw = (await conn.execute(select(func.count()).select_from(deliveries).where(
            deliveries.c.alert_id == alert_id,
            or_(deliveries.c.contact_id == gw, deliveries.c.on_behalf_of == gw)))).scalar_one()
    assert about_gw == 3  # the SMS, the call to them, the call to their village head
    await answered(store, alert_id, p["head-339901001001"])
    people = await silent_people(store, alert_id)
    assert [x["id"] for x in people] == sorted([p["duty-339901001"], gw])
    row = next(x for x in people if x["id"] == gw)
    first = min(r.created_at for r in await rows(store, deliveries.c.contact_id == gw))
    assert row["name"] == "网格员01001" and row["role"] == "grid_worker"
    assert row["village"] == "第1镇1村" and row["phone"] == "+86170****0012"
    assert row["steps"] == 2 and row["last_channel"] == "voice"
    assert row["first_message_at"] == first and row["silent_at"] is None
    assert await silent_people(store, alert_id, township="339901002") == []
    page = await silent_people(store, alert_id, limit=1)
    assert len(page) == 1
    assert [x["id"] for x in await silent_people(store, alert_id, after_id=page[0]["id"])
            ] == [people[1]["id"]]


async def test_a_role_without_steps_is_silent_after_its_within(store: Store) -> None:
    """ack.within holds for a role that must answer but has no escalation steps: its first
    message carries the deadline, and whoever passes it unanswered is silent."""
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    base = policy()
    red = base.levels["red"].model_copy(update={"roles": {
        **base.levels["red"].roles,
        "grid_worker": base.levels["red"].roles["grid_worker"].model_copy(
            update={"escalation": ()})}})
    pol = base.model_copy(update={"levels": {**base.levels, "red": red}})
    before = time.time()
    alert_id = await warned(store, pol)
    async with store.read() as conn:
        [deadline] = (await conn.execute(select(deliveries.c.escalate_at).where(
            deliveries.c.alert_id == alert_id, deliveries.c.role == "grid_worker"))).scalars()
    assert deadline is not None and deadline >= before + 300
    await overdue(store)
    await escalate_due(store, pol)
    people = await silent_people(store, alert_id, only_exhausted=True)
    assert [p["role"] for p in people if p["role"] == "grid_worker"] == ["grid_worker"]
