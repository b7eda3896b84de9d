"""Escalation sweeps, speaker repeats and speaker fallbacks straight against the store, on
each backend: which rows each sweep adds, and that a sweep adds each step once."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, update

from tests.smallcounty import write_small_county
from warngate.alerts import AlertService, NewAlert
from warngate.escalation import (
    escalate_due,
    repeat_speakers,
    speaker_fallback,
    speakers_needing_fallback,
)
from warngate.planning import Planner, priority_of
from warngate.policy import Policy
from warngate.store import Store
from warngate.store.schema import alerts, contacts, deliveries, speakers

T1 = "339901001"
V1 = f"{T1}001"
G1 = f"{V1}001"

#: Four steps: the person again, their supervisor by voice, then by SMS, then the person.
STEPS = [
    {"after": 60, "channel": "voice"},
    {"after": 120, "channel": "voice", "to": "supervisor"},
    {"after": 150, "channel": "sms", "to": "supervisor"},
    {"after": 240, "channel": "voice"},
]


def policy(*, repeat_every: float | None = None) -> Policy:
    responsible = {"channels": ["sms"], "ack": {"required": True}, "escalation": STEPS}
    return Policy.model_validate({
        "levels": {
            **{lvl: {"roles": {"grid_worker": {"channels": ["sms"]}}}
               for lvl in ("blue", "yellow", "orange")},
            "red": {
                "roles": {"township_duty": responsible, "village_head": responsible,
                          "grid_worker": responsible, "household": {"channels": ["sms"]}},
                "speakers": {"enabled": True, "repeat_every": repeat_every,
                             "fallback_role": "village_head", "fallback_channel": "voice"},
            },
        },
    })


async def warned(store: Store, pol: Policy, *, expires: float | None = None) -> int:
    """A red warning for township T1, planned (nothing sent); its alert id."""
    accepted = await AlertService(store, pol).accept(NewAlert(
        source="test", sender="test", identifier=str(uuid.uuid4()), sent=str(time.time()),
        level="red", event="暴雨", headline="暴雨红色预警", areas=[T1], created_by="test",
        expires=expires), actor="test")
    await Planner(store, pol).plan_alert(accepted.alert_id)
    return accepted.alert_id


async def overdue(store: Store, *where: Any) -> None:
    """Every pending deadline (of the rows ``where`` picks) has passed."""
    async with store.write() as conn:
        await conn.execute(update(deliveries)
                           .where(deliveries.c.escalate_at.is_not(None), *where)
                           .values(escalate_at=time.time() - 1))


async def people(store: Store) -> dict[str, int]:
    async with store.read() as conn:
        return dict((await conn.execute(select(contacts.c.role, contacts.c.id).where(
            contacts.c.role != "household"))).all())


STEP_COLUMNS = (deliveries.c.contact_id, deliveries.c.on_behalf_of, deliveries.c.role,
                deliveries.c.channel, deliveries.c.kind, deliveries.c.state,
                deliveries.c.priority, deliveries.c.village_rank, deliveries.c.ack_required,
                deliveries.c.township_code, deliveries.c.village_code, deliveries.c.grid_code)


async def step_rows(store: Store, step: int) -> list[Any]:
    async with store.read() as conn:
        return list((await conn.execute(
            select(*STEP_COLUMNS, deliveries.c.escalate_at - deliveries.c.created_at,
                   deliveries.c.due_at - deliveries.c.created_at)
            .where(deliveries.c.step == step).order_by(deliveries.c.contact_id,
                                                       deliveries.c.on_behalf_of))).all())


#: Where each person's own delivery is: an escalation row keeps the area of the person who
#: did not answer, also when it calls their supervisor.
AREA = {"township_duty": (T1, None, None), "village_head": (T1, V1, None),
        "grid_worker": (T1, V1, G1)}


def expect(contact: int, on_behalf_of: int | None, role: str, channel: str,
           person_role: str, after: float | None) -> tuple[Any, ...]:
    return (contact, on_behalf_of, role, channel, "alert", "planned",
            priority_of("red", role) - 1, 0, True, *AREA[person_role], after, 0.0)


def rows_as_tuples(rows: list[Any]) -> list[tuple[Any, ...]]:
    out = []
    for r in rows:
        t = tuple(r)
        after = None if t[-2] is None else round(t[-2], 3)
        out.append((*t[:-2], after, round(t[-1], 3)))
    return sorted(out, key=lambda t: (t[0], t[1] or 0))


async def test_each_sweep_takes_the_next_step_for_every_overdue_person(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    pol = policy()
    await warned(store, pol)
    p = await people(store)
    duty, head, gw, county = (p["township_duty"], p["village_head"], p["grid_worker"],
                              p["county_duty"])

    await overdue(store)
    assert await escalate_due(store, pol) == 3
    assert rows_as_tuples(await step_rows(store, 1)) == sorted([
        expect(duty, None, "township_duty", "voice", "township_duty", 60.0),
        expect(head, None, "village_head", "voice", "village_head", 60.0),
        expect(gw, None, "grid_worker", "voice", "grid_worker", 60.0),
    ], key=lambda t: t[0])
    assert await escalate_due(store, pol) == 0  # each deadline is taken once

    await overdue(store)
    assert await escalate_due(store, pol) == 3
    # The supervisor is called on behalf of the person, in the supervisor's role.
    assert rows_as_tuples(await step_rows(store, 2)) == sorted([
        expect(county, duty, "county_duty", "voice", "township_duty", 30.0),
        expect(duty, head, "township_duty", "voice", "village_head", 30.0),
        expect(head, gw, "village_head", "voice", "grid_worker", 30.0),
    ], key=lambda t: (t[0], t[1]))

    await overdue(store)
    assert await escalate_due(store, pol) == 3
    # Still the person's steps (their role's policy), not the supervisor's own.
    assert rows_as_tuples(await step_rows(store, 3)) == sorted([
        expect(county, duty, "county_duty", "sms", "township_duty", 90.0),
        expect(duty, head, "township_duty", "sms", "village_head", 90.0),
        expect(head, gw, "village_head", "sms", "grid_worker", 90.0),
    ], key=lambda t: (t[0], t[1]))

    await overdue(store)
    assert await escalate_due(store, pol) == 3
    # The last step waits for the deadline (ack.within, 600 s after the first message):
    # then the person is silent and the duty officers are alarmed.
    assert rows_as_tuples(await step_rows(store, 4)) == sorted([
        expect(duty, None, "township_duty", "voice", "township_duty", 360.0),
        expect(head, None, "village_head", "voice", "village_head", 360.0),
        expect(gw, None, "grid_worker", "voice", "grid_worker", 360.0),
    ], key=lambda t: t[0])

    await overdue(store)
    assert await escalate_due(store, pol) == 0  # no step after the last
    async with store.read() as conn:
        pending = (await conn.execute(select(func.count()).select_from(deliveries).where(
            deliveries.c.escalate_at.is_not(None)))).scalar_one()
    assert pending == 0


async def test_no_supervisor_ends_that_persons_chain_only(
    store: Store, caplog: pytest.LogCaptureFixture,
) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    p = await people(store)
    async with store.write() as conn:
        await conn.execute(update(contacts).where(contacts.c.id == p["grid_worker"])
                           .values(supervisor_id=None))
    pol = policy()
    await warned(store, pol)
    await overdue(store)
    assert await escalate_due(store, pol) == 3
    await overdue(store)
    assert await escalate_due(store, pol) == 2
    assert {(r.contact_id, r.on_behalf_of) for r in await step_rows(store, 2)} == {
        (p["county_duty"], p["township_duty"]), (p["township_duty"], p["village_head"])}
    assert "no supervisor" in caplog.text
    await overdue(store)
    assert await escalate_due(store, pol) == 2


async def test_acknowledged_and_stopped_alerts_take_no_step(store: Store) -> None:
    await write_small_county(store, townships=1, villages=1, grids=1, households=1)
    pol = policy()
    p = await people(store)
    live = await warned(store, pol)
    stopped = await warned(store, pol)
    async with store.write() as conn:
        await conn.execute(update(alerts).where(alerts.c.id == stopped)
                           .values(state="cancelled"))
        await conn.execute(update(deliveries).where(
            deliveries.c.alert_id == live, deliveries.c.contact_id == p["village_head"])
            .values(acked_at=time.time(), state="acknowledged"))
    await overdue(store)
    assert await escalate_due(store, pol) == 2
    async with store.read() as conn:
        stepped = (await conn.execute(select(deliveries.c.alert_id, deliveries.c.contact_id)
                                      .where(deliveries.c.step == 1))).all()
        left = (await conn.execute(select(deliveries.c.alert_id, deliveries.c.contact_id)
                                   .where(deliveries.c.escalate_at.is_not(None),
                                          deliveries.c.step == 0))).all()
    assert sorted(tuple(r) for r in stepped) == sorted(
        [(live, p["township_duty"]), (live, p["grid_worker"])])
    # The acknowledged person's deadline is left alone (the ack clears it); the stopped
    # alert's deadlines are used up.
    assert [tuple(r) for r in left] == [(live, p["village_head"])]


async def test_one_sweep_takes_every_overdue_person_in_chunks(store: Store) -> None:
    await write_small_county(store, townships=2, villages=3, grids=2, households=1)
    pol = policy()
    await warned(store, pol)
    await overdue(store)
    # 1 duty + 3 heads + 6 grid workers in T1, in chunks of 3.
    assert await escalate_due(store, pol, limit=3) == 10
    assert len(await step_rows(store, 1)) == 10


async def test_concurrent_sweeps_take_each_step_once(store: Store) -> None:
    await write_small_county(store, townships=1, villages=3, grids=3, households=1)
    pol = policy()
    for _ in range(3):
        await warned(store, pol)
    await overdue(store)
    added = await asyncio.gather(*(escalate_due(store, pol, limit=2) for _ in range(4)))
    async with store.read() as conn:
        dupes = (await conn.execute(
            select(deliveries.c.alert_id, deliveries.c.contact_id, func.count())
            .where(deliveries.c.step == 1)
            .group_by(deliveries.c.alert_id, deliveries.c.contact_id)
            .having(func.count() > 1))).all()
        stepped = (await conn.execute(select(func.count()).select_from(deliveries)
                                      .where(deliveries.c.step == 1))).scalar_one()
    assert dupes == []
    assert sum(added) == stepped == 3 * (1 + 3 + 9)


async def test_speakers_repeat_on_schedule(store: Store) -> None:
    await write_small_county(store, townships=1, villages=2, grids=1, households=1)
    pol = policy(repeat_every=30)
    live = await warned(store, pol)
    ended = await warned(store, pol, expires=time.time() + 3600)
    spk = select(deliveries.c.alert_id, deliveries.c.step, deliveries.c.priority,
                 deliveries.c.escalate_at, deliveries.c.created_at, deliveries.c.kind,
                 deliveries.c.ack_required).where(deliveries.c.role == "speaker")
    # A failed play pulled the deadline forward: the repeat keeps to its schedule.
    await overdue(store, deliveries.c.role == "speaker")
    assert await repeat_speakers(store, pol) == 0
    async with store.read() as conn:
        rows = (await conn.execute(spk)).all()
    assert len(rows) == 4  # two speakers, two alerts
    assert all(r.escalate_at == pytest.approx(r.created_at + 30) for r in rows)

    async with store.write() as conn:
        await conn.execute(update(deliveries).where(deliveries.c.role == "speaker")
                           .values(created_at=deliveries.c.created_at - 31))
        await conn.execute(update(alerts).where(alerts.c.id == ended)
                           .values(expires=time.time() - 1))
    await overdue(store, deliveries.c.role == "speaker")
    before = time.time()
    assert await repeat_speakers(store, pol) == 2
    async with store.read() as conn:
        rows = (await conn.execute(spk.where(deliveries.c.step == 1))).all()
        left = (await conn.execute(select(func.count()).select_from(deliveries).where(
            deliveries.c.role == "speaker", deliveries.c.step == 0,
            deliveries.c.escalate_at.is_not(None)))).scalar_one()
    assert len(rows) == 2
    for r in rows:
        assert (r.alert_id, r.kind, r.ack_required) == (live, "alert", False)
        assert r.priority == priority_of("red", "speaker")
        assert r.created_at >= before and r.escalate_at == pytest.approx(r.created_at + 30)
    assert left == 0


async def test_offline_speaker_fallback_is_added_once_even_after_the_call_fails(
    store: Store,
) -> None:
    # The village head's fallback call fails (a provider error overwrites last_error): the
    # sweeps that follow must not call the head again and again.
    await write_small_county(store, townships=1, villages=2, grids=1, households=1)
    pol = policy()
    alert_id = await warned(store, pol)
    speaker = f"spk-{V1}"
    async with store.write() as conn:
        await conn.execute(update(speakers).where(speakers.c.id == speaker)
                           .values(online=False))
    fallback = (select(deliveries.c.id, deliveries.c.contact_id, deliveries.c.village_code,
                       deliveries.c.priority, deliveries.c.ack_required,
                       deliveries.c.fallback_for_speaker)
                .where(deliveries.c.role == "village_head", deliveries.c.channel == "voice",
                       deliveries.c.step == 0))
    assert await speakers_needing_fallback(store) == [speaker]
    assert await speaker_fallback(store, pol, speaker) == 1
    async with store.read() as conn:
        [row] = (await conn.execute(fallback)).all()
        head = (await conn.execute(select(contacts.c.id).where(
            contacts.c.role == "village_head", contacts.c.village_code == V1))).scalar_one()
    assert (row.contact_id, row.village_code, row.fallback_for_speaker) == (head, V1, speaker)
    assert row.priority == priority_of("red", "village_head") - 1 and row.ack_required

    async with store.write() as conn:
        await conn.execute(update(deliveries).where(deliveries.c.id == row.id).values(
            state="failed", last_error="Twilio error 21211: The 'To' number is not a valid "
                                       "phone number."))
    for _ in range(3):  # what each escalation sweep does
        for sid in await speakers_needing_fallback(store):
            assert await speaker_fallback(store, pol, sid) == 0
    assert await speaker_fallback(store, pol, speaker) == 0
    async with store.read() as conn:
        assert len((await conn.execute(fallback)).all()) == 1
        n_alert = (await conn.execute(select(func.count()).select_from(deliveries).where(
            deliveries.c.alert_id == alert_id))).scalar_one()
    assert n_alert > 1


async def test_failed_speaker_gets_the_fallback_of_each_live_alert(store: Store) -> None:
    await write_small_county(store, townships=1, villages=2, grids=1, households=1)
    pol = policy()
    first = await warned(store, pol)
    second = await warned(store, pol)
    speaker = f"spk-{V1}"
    async with store.write() as conn:
        # Online, but the amplifier reported a fault.
        await conn.execute(update(deliveries).where(deliveries.c.speaker_id == speaker)
                           .values(state="failed", last_error="amplifier fault"))
    assert await speakers_needing_fallback(store) == [speaker]
    assert await speaker_fallback(store, pol, speaker) == 2
    assert await speaker_fallback(store, pol, speaker) == 0
    async with store.read() as conn:
        rows = (await conn.execute(select(deliveries.c.alert_id, deliveries.c.village_code)
                                   .where(deliveries.c.fallback_for_speaker == speaker))).all()
    assert sorted(tuple(r) for r in rows) == sorted([(first, V1), (second, V1)])
    assert await speaker_fallback(store, pol, "no-such-speaker") == 0


async def test_the_gateway_sweeps_at_the_deadline_not_a_whole_interval_later(
        store: Store) -> None:
    """The sweep runs every 30 s here, the first step is due 1 s after the warning: the
    people who did not answer are called when their time is up."""
    from tests.gateway_run import GatewayRun
    from tests.integration.test_pipeline import policy as pipeline_policy
    from tests.integration.test_pipeline import settings as pipeline_settings
    from tests.smallcounty import write_small_county
    from warngate.service import Gateway, load_adapters
    from warngate.settings import EscalationSettings

    await write_small_county(store)
    url = store.engine.url.render_as_string(hide_password=False)
    s = pipeline_settings(url, sms_ack=0.0, voice_ack=0.0).model_copy(
        update={"escalation": EscalationSettings(sweep_every=30.0)})
    pol = pipeline_policy(step1_after=1.0, step2_after=60.0)
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        run = GatewayRun(gw)
        started = time.monotonic()
        await run.warn()
        await run.until(select(deliveries.c.id).where(deliveries.c.step == 1),
                        lambda rows: len(rows) > 0, within=25.0)
        took = time.monotonic() - started
    assert took < 15.0, took  # a ceiling far below the 30 s interval, not a timing claim


async def test_a_sweep_the_busy_loop_started_late_still_runs(store: Store) -> None:
    """The loop is blocked across the deadline (a burst of work, a slow disk): the sweep
    due then runs late, rather than being skipped until the next interval."""
    import asyncio

    from tests.gateway_run import GatewayRun
    from tests.integration.test_pipeline import policy as pipeline_policy
    from tests.integration.test_pipeline import settings as pipeline_settings
    from tests.smallcounty import write_small_county
    from warngate.service import Gateway, load_adapters
    from warngate.settings import EscalationSettings

    await write_small_county(store)
    url = store.engine.url.render_as_string(hide_password=False)
    s = pipeline_settings(url, sms_ack=0.0, voice_ack=0.0).model_copy(
        update={"escalation": EscalationSettings(sweep_every=60.0)})
    pol = pipeline_policy(step1_after=1.0, step2_after=120.0)
    async with Gateway(s, pol, store, load_adapters(s, pol)) as gw:
        run = GatewayRun(gw)
        await run.warn()
        # Blocks the loop from before the first step's deadline until well after it.
        asyncio.get_running_loop().call_later(0.5, time.sleep, 3.0)
        await run.until(select(deliveries.c.id).where(deliveries.c.step == 1),
                        lambda rows: len(rows) > 0, within=30.0)
