"""One warning through the whole path on each backend: plan, send, receipts, acks, escalation,
cancel — with the simulated providers."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select

from tests.gateway_run import ADMIN, wait_until
from tests.smallcounty import write_small_county
from warngate.alerts import ComposeRequest
from warngate.policy import Policy
from warngate.receipts import ReceiptWriter
from warngate.service import Gateway, load_adapters
from warngate.settings import (
    AdapterSettings,
    AuthSettings,
    DispatchSettings,
    EscalationSettings,
    Settings,
)
from warngate.store import Store
from warngate.store.schema import acknowledgements, contacts, deliveries, rejected_inputs

T1 = "339901001"


def policy(step1_after: float = 0.3, step2_after: float = 0.6) -> Policy:
    responsible = {
        "channels": ["sms"],
        "ack": {"required": True, "within": 5},
        "escalation": [
            {"after": step1_after, "channel": "voice"},
            {"after": step2_after, "channel": "voice", "to": "supervisor"},
        ],
    }
    return Policy.model_validate({
        "levels": {
            "blue": {"roles": {"grid_worker": {"channels": ["sms"]}}},
            "yellow": {"roles": {"grid_worker": {"channels": ["sms"]}}},
            "orange": {"roles": {"grid_worker": {"channels": ["sms"]}}},
            "red": {
                "roles": {
                    "township_duty": responsible,
                    "village_head": responsible,
                    "grid_worker": responsible,
                    "household": {"channels": ["sms"]},
                },
                "speakers": {"enabled": True},
            },
        },
        "drills": {"roles": ["township_duty"]},
    })


def settings(store_url: str, *, sms_ack: float, voice_ack: float) -> Settings:
    return Settings(
        database={"url": store_url},  # type: ignore[arg-type]
        auth=AuthSettings(four_eyes=False),
        adapters=(
            AdapterSettings(name="sms", type="sim-sms", channel="sms", rate_per_second=5000,
                            options={"ack_probability": sms_ack}),
            AdapterSettings(name="voice", type="sim-voice", channel="voice",
                            rate_per_second=5000, options={"ack_probability": voice_ack}),
            AdapterSettings(name="speaker", type="sim-speaker", channel="speaker",
                            rate_per_second=5000),
        ),
        dispatch=DispatchSettings(idle_poll=0.02),
        escalation=EscalationSettings(sweep_every=0.1),
    )


def by_state() -> Any:
    return (select(deliveries.c.kind, deliveries.c.role, deliveries.c.channel,
                   deliveries.c.step, deliveries.c.state, func.count())
            .group_by(deliveries.c.kind, deliveries.c.role, deliveries.c.channel,
                      deliveries.c.step, deliveries.c.state))


def settled(rows: Any) -> bool:
    return bool(rows) and all(r.state not in ("planned", "retry", "sending") for r in rows)


async def test_red_warning_reaches_everyone_and_escalates(store: Store) -> None:
    await write_small_county(store)
    url = store.engine.url.render_as_string(hide_password=False)
    s = settings(url, sms_ack=0.0, voice_ack=1.0)
    # The supervisor step far enough out that a loaded machine answering the voice call a
    # little late cannot reach it: this test is about the first step.
    pol = policy(step2_after=60)
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        accepted = await gw.alerts.compose(ADMIN, ComposeRequest(
            level="red", event="暴雨", headline="暴雨红色预警", areas=[T1]))
        assert accepted.state == "pending_approval"
        # 1 duty + 3 heads + 6 grid workers + 24 households by SMS; 3 speakers.
        assert accepted.recipients == {"sms": 34, "speaker": 3}
        await gw.alerts.approve(ADMIN, accepted.alert_id)

        # Nobody answers the SMS; everyone answers the voice call of the first escalation.
        rows = await wait_until(store, by_state(), lambda rows: settled(rows) and any(
            r.step == 1 and r.state == "acknowledged" for r in rows) and sum(
            r[5] for r in rows if r.step == 1 and r.state == "acknowledged") == 10)

    got = {(r.kind, r.role, r.channel, r.step, r.state): r[5] for r in rows}
    assert got[("alert", "household", "sms", 0, "delivered")] == 24
    assert got[("alert", "speaker", "speaker", 0, "acknowledged")] == 3
    for role, n in (("township_duty", 1), ("village_head", 3), ("grid_worker", 6)):
        assert got[("alert", role, "sms", 0, "delivered")] == n
        assert got[("alert", role, "voice", 1, "acknowledged")] == n
    # Answered at step 1: nobody's supervisor was called.
    assert not any(r.step == 2 for r in rows)
    async with store.read() as conn:
        townships = set((await conn.execute(
            select(deliveries.c.township_code).distinct())).scalars())
        villages = set((await conn.execute(
            select(deliveries.c.village_code).where(deliveries.c.role == "household")
            .distinct())).scalars())
        acks = (await conn.execute(select(func.count()).select_from(acknowledgements))
                ).scalar_one()
    assert townships == {T1}
    assert villages == {f"{T1}00{v}" for v in (1, 2, 3)}
    assert acks == 13  # 10 people by DTMF + 3 speakers "played"


async def test_no_answer_goes_to_the_supervisor(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    url = store.engine.url.render_as_string(hide_password=False)
    s = settings(url, sms_ack=0.0, voice_ack=0.0)
    pol = policy(step1_after=0.1, step2_after=0.2)
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        accepted = await gw.alerts.compose(ADMIN, ComposeRequest(
            level="red", event="暴雨", headline="暴雨红色预警", areas=[T1]))
        await gw.alerts.approve(ADMIN, accepted.alert_id)
        q = select(deliveries.c.role, deliveries.c.step, deliveries.c.on_behalf_of,
                   deliveries.c.contact_id, deliveries.c.state, deliveries.c.escalate_at)
        rows = await wait_until(store, q, lambda rows: sum(
            1 for r in rows if r.step == 2) == 3 and settled(rows))
    ids = {r.role: r.contact_id for r in rows if r.step == 0 and r.role != "household"}
    second = {r.on_behalf_of: (r.contact_id, r.role) for r in rows if r.step == 2}
    # grid worker → village head, village head → township duty, duty → county duty.
    assert second[ids["grid_worker"]] == (ids["village_head"], "village_head")
    assert second[ids["village_head"]] == (ids["township_duty"], "township_duty")
    assert second[ids["township_duty"]][1] == "county_duty"
    # No step after the last: the last step's row waits only for the deadline (ack.within),
    # when the person is silent and the duty officers are alarmed.
    assert not any(r.step > 2 for r in rows)


async def test_cancel_stops_pending_and_lifts_for_those_reached(store: Store) -> None:
    await write_small_county(store, townships=1)
    url = store.engine.url.render_as_string(hide_password=False)
    s = settings(url, sms_ack=1.0, voice_ack=1.0)
    pol = policy(step1_after=60, step2_after=120)
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        accepted = await gw.alerts.compose(ADMIN, ComposeRequest(
            level="red", event="暴雨", headline="暴雨红色预警", areas=[T1]))
        await gw.alerts.approve(ADMIN, accepted.alert_id)
        await wait_until(store, by_state(), settled)
        result = await gw.alerts.cancel(ADMIN, accepted.alert_id, "雨停")
        assert result["state"] == "cancelled"
        rows = await wait_until(store, by_state(), lambda rows: settled(rows) and any(
            r.kind == "cancel" for r in rows))
    lifted = {(r.role, r.channel): r[5] for r in rows if r.kind == "cancel"}
    reached = 1 + 3 + 6 + 24
    assert sum(n for (role, _), n in lifted.items() if role != "speaker") == reached
    assert lifted[("speaker", "speaker")] == 3
    assert result["lifted_notices"] == reached + 3


async def test_drill_reaches_only_drill_roles(store: Store) -> None:
    await write_small_county(store, townships=1)
    url = store.engine.url.render_as_string(hide_password=False)
    s = settings(url, sms_ack=1.0, voice_ack=1.0)
    pol = policy()
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        accepted = await gw.alerts.compose(ADMIN, ComposeRequest(
            level="red", event="演练", headline="防汛演练", areas=[T1], status="Exercise"))
        await gw.alerts.approve(ADMIN, accepted.alert_id)
        rows = await wait_until(store, by_state(), settled)
    assert {r.role for r in rows} == {"township_duty"}


async def test_red_warning_repeats_on_speakers_until_cancelled(store: Store) -> None:
    await write_small_county(store, townships=1, villages=2, grids=1, households=1)
    url = store.engine.url.render_as_string(hide_password=False)
    s = settings(url, sms_ack=1.0, voice_ack=1.0)
    base = policy(step1_after=60, step2_after=120)
    red = base.levels["red"].model_copy(update={
        "speakers": base.levels["red"].speakers.model_copy(update={"repeat_every": 0.3})})
    pol = base.model_copy(update={"levels": {**base.levels, "red": red}})
    speaker_rows = (select(deliveries.c.kind, deliveries.c.step, deliveries.c.state)
                    .where(deliveries.c.role == "speaker"))
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        accepted = await gw.alerts.compose(ADMIN, ComposeRequest(
            level="red", event="暴雨", headline="暴雨红色预警", areas=[T1]))
        await gw.alerts.approve(ADMIN, accepted.alert_id)
        # Each of the 2 speakers plays the warning, then again, then again.
        await wait_until(store, speaker_rows, lambda rows: sum(
            1 for r in rows if r.step >= 2 and r.state == "acknowledged") >= 2)
        await gw.alerts.cancel(ADMIN, accepted.alert_id, "雨停")
        rows = await wait_until(store, speaker_rows, lambda rows: settled(rows) and sum(
            1 for r in rows if r.kind == "cancel") == 2)
        repeats = sum(1 for r in rows if r.kind == "alert")
        # Several sweeps later, nothing more was played.
        for _ in range(3):
            await asyncio.sleep(s.escalation.sweep_every * 2)
        async with store.read() as conn:
            after = (await conn.execute(speaker_rows)).all()
    assert sum(1 for r in after if r.kind == "alert") == repeats
    assert len(after) == len(rows)


async def test_speaker_known_offline_gets_the_village_fallback_at_once(store: Store) -> None:
    from sqlalchemy import update

    from warngate.store.schema import speakers

    await write_small_county(store, townships=1, villages=2, grids=1, households=1)
    async with store.write() as conn:
        await conn.execute(update(speakers).where(speakers.c.id == f"spk-{T1}001")
                           .values(online=False))
    url = store.engine.url.render_as_string(hide_password=False)
    base = settings(url, sms_ack=1.0, voice_ack=1.0)
    # Speakers take a while to answer, so the sweep meets the delivery still open.
    adapters = tuple(a.model_copy(update={"options": {"delivery_delay": (5.0, 5.0)}})
                     if a.channel == "speaker" else a for a in base.adapters)
    s = base.model_copy(update={"adapters": adapters})
    pol = policy(step1_after=60, step2_after=120)
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        accepted = await gw.alerts.compose(ADMIN, ComposeRequest(
            level="red", event="暴雨", headline="暴雨红色预警", areas=[T1]))
        await gw.alerts.approve(ADMIN, accepted.alert_id)
        q = (select(deliveries.c.village_code, deliveries.c.role, deliveries.c.channel)
             .where(deliveries.c.fallback_for_speaker.is_not(None)))
        rows = await wait_until(store, q, lambda rows: len(rows) >= 1, within=20)
    # Only the offline speaker's village head is called, once.
    assert [(r.village_code, r.role, r.channel) for r in rows] == [
        (f"{T1}001", "village_head", "voice")]


async def test_concurrent_fallbacks_for_one_speaker_call_the_village_head_once(
    store: Store,
) -> None:
    from sqlalchemy import update

    from warngate.escalation import speaker_fallback
    from warngate.store.schema import speakers

    # The status listener and the escalation sweep (in this and other gateway processes)
    # may ask for the same speaker's fallback at the same moment.
    await write_small_county(store, townships=1, villages=2, grids=1, households=1)
    speaker = f"spk-{T1}001"
    async with store.write() as conn:
        await conn.execute(update(speakers).where(speakers.c.id == speaker).values(online=False))
    url = store.engine.url.render_as_string(hide_password=False)
    s = settings(url, sms_ack=1.0, voice_ack=1.0)
    pol = policy(step1_after=60, step2_after=120)
    alerts = Gateway(s, pol, store, []).alerts  # planning only: nothing is sent
    accepted = await alerts.compose(ADMIN, ComposeRequest(
        level="red", event="暴雨", headline="暴雨红色预警", areas=[T1]))
    await alerts.approve(ADMIN, accepted.alert_id)
    added = await asyncio.gather(*(speaker_fallback(store, pol, speaker) for _ in range(8)))
    async with store.read() as conn:
        rows = (await conn.execute(
            select(deliveries.c.village_code, deliveries.c.role)
            .where(deliveries.c.fallback_for_speaker.is_not(None)))).all()
    assert [tuple(r) for r in rows] == [(f"{T1}001", "village_head")]
    assert sorted(added) == [0] * 7 + [1]


async def sent_and_unanswered(store: Store, *events: str) -> list[int]:
    """One red warning per event to a one-grid county, all sent, nobody answering."""
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    url = store.engine.url.render_as_string(hide_password=False)
    s = settings(url, sms_ack=0.0, voice_ack=0.0)
    pol = policy(step1_after=600, step2_after=1200)
    alert_ids = []
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        for event in events:
            accepted = await gw.alerts.compose(ADMIN, ComposeRequest(
                level="red", event=event, headline=f"{event}红色预警", areas=[T1]))
            await gw.alerts.approve(ADMIN, accepted.alert_id)
            alert_ids.append(accepted.alert_id)
        await wait_until(store, by_state(), settled)
    return alert_ids


async def test_reply_by_phone_acknowledges_the_newest_open_warning(store: Store) -> None:
    alert_ids = await sent_and_unanswered(store, "暴雨", "山洪")
    async with store.read() as conn:
        phone = (await conn.execute(
            select(contacts.c.phone).where(contacts.c.role == "grid_worker"))).scalar_one()
    acked = (select(deliveries.c.alert_id).join(contacts, contacts.c.id == deliveries.c.contact_id)
             .where(contacts.c.phone == phone, deliveries.c.acked_at.is_not(None)))

    writer = ReceiptWriter(store)
    writer.acknowledge(phone=phone, via="sms-reply")
    writer.acknowledge(phone="+8613900000000", via="sms-reply")  # nobody's number
    await writer.flush()
    async with store.read() as conn:
        assert list((await conn.execute(acked)).scalars()) == [alert_ids[1]]
        kept = (await conn.execute(select(rejected_inputs.c.reason))).scalars().all()
    assert len(kept) == 1 and writer.unknown == 1

    writer.acknowledge(phone=phone, via="sms-reply")  # the next reply: the older warning
    await writer.flush()
    async with store.read() as conn:
        assert sorted((await conn.execute(acked)).scalars()) == sorted(alert_ids)


async def test_ids_no_column_can_hold_do_not_block_other_receipts(store: Store) -> None:
    await sent_and_unanswered(store, "暴雨")
    async with store.read() as conn:
        real = (await conn.execute(select(deliveries.c.id).where(
            deliveries.c.role == "grid_worker"))).scalar_one()

    # A speaker (or anything else) naming an id beyond 64 bits, or below 1, in the same
    # batch as a genuine acknowledgement.
    writer = ReceiptWriter(store)
    writer.receipt(delivery_id=2**70, status="delivered")
    writer.acknowledge(delivery_id=-5, via="speaker")
    writer.acknowledge(delivery_id=real, via="a-channel-name-longer-than-the-column")
    await writer.flush()
    async with store.read() as conn:
        acked = (await conn.execute(select(deliveries.c.state).where(
            deliveries.c.id == real))).scalar_one()
        kept = (await conn.execute(select(func.count()).select_from(rejected_inputs))
                ).scalar_one()
    assert (acked, kept, writer.unknown) == ("acknowledged", 2, 2)
