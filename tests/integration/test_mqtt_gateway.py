"""The whole gateway (store, planner, lanes, receipts, escalation) sounding simulated
speakers through the ``mqtt-speaker`` adapter and a private Mosquitto running the shipped
configuration and ACL; people are reached with the simulated SMS and voice adapters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import select
from warngate_mqtt.speaker_sim import Behaviour, SpeakerSimulator

from tests.gateway_run import ADMIN, GatewayRun
from tests.mosquitto import GATEWAY_USER, Mosquitto, throwaway_mosquitto
from tests.smallcounty import write_small_county
from warngate.policy import Policy
from warngate.service import Gateway, load_adapters
from warngate.settings import (
    AdapterSettings,
    AuthSettings,
    DispatchSettings,
    EscalationSettings,
    RetrySettings,
    Settings,
)
from warngate.store import Store
from warngate.store.schema import acknowledgements, deliveries, receipts, rejected_inputs, speakers

pytestmark = pytest.mark.mqtt

T1 = "339901001"
GW_PASSWORD = "gateway-secret"
SPEAKER_PASSWORD = "speaker-secret"


def policy(*, repeat_every: float | None = None) -> Policy:
    return Policy.model_validate({
        "levels": {
            **{lvl: {"roles": {"township_duty": {"channels": ["sms"]}}}
               for lvl in ("blue", "yellow", "orange")},
            "red": {
                "roles": {"township_duty": {"channels": ["sms"]},
                          "village_head": {"channels": ["sms"]}},
                "speakers": {"enabled": True, "repeat_every": repeat_every,
                             "fallback_role": "village_head", "fallback_channel": "voice"},
            },
        },
        "drills": {"roles": ["township_duty"]},
    })


@dataclass
class Run(GatewayRun):
    sim: SpeakerSimulator
    broker: Mosquitto


SPEAKER_ROWS = select(deliveries.c.id, deliveries.c.kind, deliveries.c.speaker_id,
                      deliveries.c.step, deliveries.c.state).where(
                          deliveries.c.channel == "speaker")


async def speaker_ids(store: Store) -> list[str]:
    async with store.read() as conn:
        return sorted((await conn.execute(select(speakers.c.id))).scalars())


@contextlib.asynccontextmanager
async def running(
    store: Store, monkeypatch: pytest.MonkeyPatch, *, pol: Policy,
    behaviour: Behaviour | None = None, mute: Sequence[str] = (),
    county: dict[str, int] | None = None, speaker_rate: float = 5000, **options: Any,
) -> AsyncIterator[Run]:
    await write_small_county(store, **(county or {"townships": 1, "villages": 3, "grids": 1,
                                                  "households": 1}))
    ids = await speaker_ids(store)
    monkeypatch.setenv("WARNGATE_MQTT_PASSWORD", GW_PASSWORD)
    url = store.engine.url.render_as_string(hide_password=False)
    users = {GATEWAY_USER: GW_PASSWORD, **{sid: SPEAKER_PASSWORD for sid in ids}}
    async with throwaway_mosquitto(users) as broker:
        settings = Settings(
            database={"url": url},  # type: ignore[arg-type]
            auth=AuthSettings(four_eyes=False),
            adapters=(
                AdapterSettings(name="sms", type="sim-sms", channel="sms",
                                rate_per_second=5000),
                AdapterSettings(name="voice", type="sim-voice", channel="voice",
                                rate_per_second=5000, options={"ack_probability": 0.0}),
                AdapterSettings(
                    name="speaker", type="mqtt-speaker", channel="speaker", concurrency=50,
                    rate_per_second=speaker_rate,
                    retry=RetrySettings(max_attempts=30, base_delay=0.2, max_delay=1.0),
                    options={"host": broker.host, "port": broker.port,
                             "username": GATEWAY_USER, "client_id": "gw-test",
                             "connect_wait": 1.0, **options}),
            ),
            dispatch=DispatchSettings(idle_poll=0.02),
            escalation=EscalationSettings(sweep_every=0.1),
        )
        async with SpeakerSimulator(host=broker.host, port=broker.port, speaker_ids=ids,
                                    password=SPEAKER_PASSWORD, behaviour=behaviour,
                                    mute=mute) as sim, \
                Gateway(settings, pol, store, load_adapters(settings, pol)) as gw:
            yield Run(gw, sim, broker)


async def test_red_warning_sounds_every_speaker_repeats_and_stops_on_cancel(
    store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(store, monkeypatch, pol=policy(repeat_every=0.5)) as run:
        ids = sorted(run.sim.speakers)
        alert_id = await run.warn()
        # Every speaker plays it, and plays it again at the policy's interval.
        await run.until(SPEAKER_ROWS, lambda rows: {
            r.speaker_id for r in rows if r.step >= 1 and r.state == "acknowledged"} == set(ids))
        await run.gw.alerts.cancel(ADMIN, alert_id, "雨停")
        rows = await run.until(SPEAKER_ROWS, lambda rows: sum(
            1 for r in rows if r.kind == "cancel" and r.state == "delivered") == len(ids))
        plays = {r.id for r in rows if r.kind == "alert"}
        # Several sweeps later, nothing more was played.
        await asyncio.sleep(1.0)
        after = await run.rows(SPEAKER_ROWS)
        played = await run.rows(select(receipts.c.delivery_id, receipts.c.status))
        acked = await run.rows(select(acknowledgements.c.speaker_id, acknowledgements.c.via))
    assert {r.id for r in after if r.kind == "alert"} == plays
    # A repeat a sweep added while the cancel was committing is dropped by its lane, never
    # played (PostgreSQL: the sweep read the alert as live a moment before).
    dropped = {r.id for r in after if (r.kind, r.state) == ("alert", "cancelled")}
    # The first plays and the repeats were acknowledged by "played"; the stops were received.
    assert {(r.kind, r.state) for r in after if r.id not in dropped} == {
        ("alert", "acknowledged"), ("cancel", "delivered")}
    by_delivery: dict[int, list[str]] = {}
    for r in played:
        by_delivery.setdefault(r.delivery_id, []).append(r.status)
    assert not dropped & set(by_delivery)
    for r in (r for r in after if r.id not in dropped):
        expected = ["received", "playing", "played"] if r.kind == "alert" else ["received"]
        assert by_delivery[r.id] == expected, r
    assert {(sid, via) for sid, via in acked} == {(sid, "speaker") for sid in ids}
    for sid in ids:
        commands = run.sim.speakers[sid].log.commands
        assert commands[-1].type == "stop" and commands[-1].alert_id == alert_id
        assert all(c.type == "play" and c.level == "red" for c in commands[:-1])
        assert len(commands) >= 3


async def test_offline_speaker_gets_its_village_head_called_at_once(
    store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    village = f"{T1}002"
    silent = f"spk-{village}"
    # The speaker takes the command but never answers (and no ack timeout): the delivery
    # stays open until its power is cut and the broker publishes its last will.
    async with running(store, monkeypatch, pol=policy(), mute=[silent],
                       ack_timeout=None) as run:
        await run.warn()
        await run.until(SPEAKER_ROWS, lambda rows: len(rows) == 3 and sum(
            1 for r in rows if r.state == "acknowledged") == 2 and any(
            r.speaker_id == silent and r.state == "sent" for r in rows))
        run.sim.power_cut(silent)
        fallback = (select(deliveries.c.village_code, deliveries.c.role, deliveries.c.channel,
                           deliveries.c.state)
                    .where(deliveries.c.fallback_for_speaker.is_not(None)))
        rows = await run.until(fallback, lambda rows: bool(rows) and all(
            r.state != "planned" for r in rows))
        online = dict(await run.rows(select(speakers.c.id, speakers.c.online)))
    assert [(r.village_code, r.role, r.channel) for r in rows] == [
        (village, "village_head", "voice")]
    assert online[silent] is False
    assert all(online[s] is True for s in online if s != silent)


async def test_speaker_that_never_answers_also_gets_the_fallback(
    store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    village = f"{T1}003"
    silent = f"spk-{village}"
    async with running(store, monkeypatch, pol=policy(), mute=[silent],
                       ack_timeout=0.5) as run:
        await run.warn()
        fallback = (select(deliveries.c.village_code)
                    .where(deliveries.c.fallback_for_speaker.is_not(None)))
        rows = await run.until(fallback, bool)
        said = await run.until(
            select(receipts.c.status, receipts.c.detail, deliveries.c.state)
            .join(deliveries, deliveries.c.id == receipts.c.delivery_id)
            .where(deliveries.c.speaker_id == silent), bool)
        online = dict(await run.rows(select(speakers.c.id, speakers.c.online)))
    assert [r.village_code for r in rows] == [village]
    assert [tuple(r) for r in said] == [
        ("unanswered", f"speaker {silent} did not answer within 0.5s", "sent")]
    assert online[silent] is False


async def test_ack_naming_an_unknown_delivery_is_kept_as_rejected(
    store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(store, monkeypatch, pol=policy()) as run:
        sid = sorted(run.sim.speakers)[0]
        async with aiomqtt.Client(run.broker.host, run.broker.port, username=sid,
                                  password=SPEAKER_PASSWORD,
                                  protocol=aiomqtt.ProtocolVersion.V5) as device:
            await device.publish(f"warngate/v1/speakers/{sid}/ack",
                                 b'{"delivery_id": 99999999, "status": "played"}', qos=1)
        rows = await run.until(select(rejected_inputs.c.reason, rejected_inputs.c.body),
                               lambda rows: len(rows) >= 2)
    reasons = {r.reason for r in rows}
    assert reasons == {"receipt names no delivery we know",
                       "acknowledgement names no delivery we know"}
    assert all(b"99999999" in r.body for r in rows)


async def test_broker_restart_mid_fan_out_through_the_lanes_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'warngate.db'}")
    try:
        county = {"townships": 3, "villages": 20, "grids": 1, "households": 0}
        # 300 commands at 100 a second: the broker goes down in the middle.
        async with running(store, monkeypatch, pol=policy(), county=county,
                           speaker_rate=100, publish_timeout=0.5) as run:
            for _ in range(5):
                await run.warn(areas=["339901"])  # the whole county, five times
            total = 5 * 60
            out = ("sent", "delivered", "acknowledged")
            before = await run.until(SPEAKER_ROWS, lambda rows: len(rows) == total and sum(
                1 for r in rows if r.state in out) >= total // 4)
            await run.broker.restart(down_for=1.0)
            assert sum(1 for r in before if r.state not in out) > total // 2
            rows = await run.until(SPEAKER_ROWS, lambda rows: len(rows) == total and all(
                r.state == "acknowledged" for r in rows), within=90)
        assert len({r.id for r in rows}) == total
        # Each speaker played each of its five warnings once.
        for s in run.sim.speakers.values():
            assert len({c.delivery_id for c in s.log.commands}) == len(s.log.commands) == 5
    finally:
        await store.close()
