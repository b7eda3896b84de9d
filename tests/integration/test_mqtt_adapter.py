"""The ``mqtt-speaker`` adapter against the machine's Mosquitto (127.0.0.1:1883) and the
speaker simulator: fan-out, acks, statuses, silence, stops, and input that is wrong.

Every test has its own topic prefix, speaker ids and client ids, and removes its retained
statuses and sessions afterwards, so tests never see each other on the shared broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
import pytest
from warngate_mqtt import MqttSpeakerAdapter
from warngate_mqtt.speaker_sim import Behaviour, SpeakerSimulator

from tests.mosquitto import free_port, system_mosquitto
from warngate.adapter import Outbound, PermanentError, TransientError
from warngate.settings import AdapterSettings
from warngate.testing import RecordingSink

pytestmark = pytest.mark.mqtt

HEADLINE = "夏溪县气象台发布暴雨红色预警"
BODY = "预计未来3小时内将出现50毫米以上降水，请立即组织危险区域群众转移。"


def warning(delivery_id: int, speaker_id: str, *, alert_id: int = 1, kind: str = "alert",
            **kw: Any) -> Outbound:
    return Outbound(delivery_id=delivery_id, alert_id=alert_id, kind=kind,  # type: ignore[arg-type]
                    channel="speaker", address=speaker_id, level="red", headline=HEADLINE,
                    text=BODY, **kw)


@dataclass
class Gw:
    adapter: MqttSpeakerAdapter
    sink: RecordingSink

    async def send(self, did: int, speaker_id: str, **kw: Any) -> str | None:
        return (await self.adapter.send(warning(did, speaker_id, **kw))).provider_ref

    def statuses(self, delivery_id: int) -> list[str]:
        return [r["status"] for r in self.sink.receipts if r["delivery_id"] == delivery_id]


@dataclass
class Rig:
    host: str
    port: int
    tag: str
    prefix: str

    def ids(self, n: int) -> list[str]:
        return [f"spk-{self.tag}-{i:03d}" for i in range(n)]

    def adapter(self, **options: Any) -> MqttSpeakerAdapter:
        base = {"host": self.host, "port": self.port, "prefix": self.prefix,
                "client_id": f"gw-{self.tag}", "session_expiry": 10, "connect_wait": 5}
        return MqttSpeakerAdapter(AdapterSettings(
            name="speaker", type="mqtt-speaker", channel="speaker",
            options={**base, **options}))

    @contextlib.asynccontextmanager
    async def gateway(self, **options: Any) -> AsyncIterator[Gw]:
        adapter = self.adapter(**options)
        sink = RecordingSink()
        await adapter.start(sink)
        try:
            yield Gw(adapter, sink)
        finally:
            await adapter.stop()

    def speakers(self, ids: Sequence[str], **kw: Any) -> SpeakerSimulator:
        return SpeakerSimulator(host=self.host, port=self.port, speaker_ids=ids,
                                prefix=self.prefix, session_expiry=10, clear_retained=True,
                                **kw)

    @contextlib.asynccontextmanager
    async def device(self, speaker_id: str) -> AsyncIterator[aiomqtt.Client]:
        """A plain client, to publish what a badly behaved device would."""
        async with aiomqtt.Client(self.host, self.port, username=speaker_id,
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            try:
                yield client
            finally:
                # Leave no retained message behind on the shared broker.
                await client.publish(f"{self.prefix}/speakers/{speaker_id}/status", b"",
                                     qos=1, retain=True)


@pytest.fixture
def rig() -> Rig:
    host, port = system_mosquitto()
    tag = uuid.uuid4().hex[:10]
    return Rig(host, port, tag, f"test/warngate/{tag}")


def online(sink: RecordingSink, ids: Sequence[str]) -> bool:
    last = dict(sink.statuses)
    return all(last.get(sid) is True for sid in ids)


async def test_fan_out_reaches_every_speaker_and_played_acknowledges(rig: Rig) -> None:
    ids = rig.ids(40)
    async with rig.speakers(ids) as sim, rig.gateway() as gw:
        # Their retained "online" statuses arrive as the adapter subscribes.
        await gw.sink.wait_for(lambda s: online(s, ids))
        refs = await asyncio.gather(*(gw.send(i + 1, sid) for i, sid in enumerate(ids)))
        assert refs == [str(i + 1) for i in range(len(ids))]
        await gw.sink.wait_for(lambda s: len(s.acks) == len(ids))
    for i, sid in enumerate(ids):
        did = i + 1
        # Each speaker got exactly its own command, with the warning in Chinese.
        (command,) = sim.speakers[sid].log.commands
        assert (command.type, command.delivery_id, command.level) == ("play", did, "red")
        assert command.text == f"{HEADLINE}。{BODY}"
        assert gw.statuses(did) == ["received", "playing", "played"]
    assert sorted(a["delivery_id"] for a in gw.sink.acks) == list(range(1, len(ids) + 1))
    assert {(a["via"], a["phone"]) for a in gw.sink.acks} == {("speaker", None)}
    assert gw.adapter.counts["commands"] == len(ids)


async def test_power_cut_reports_offline_at_once(rig: Rig) -> None:
    a, b = rig.ids(2)
    async with rig.speakers([a, b]) as sim, rig.gateway(ack_timeout=None) as gw:
        await gw.sink.wait_for(lambda s: online(s, [a, b]))
        sim.power_cut(a)
        # The broker publishes a's last will; no command, no timeout involved.
        await gw.sink.wait_for(lambda s: s.statuses[-1] == (a, False))
        sim.power_on(a)
        await gw.sink.wait_for(lambda s: s.statuses[-1] == (a, True))
    assert (b, False) not in gw.sink.statuses


async def test_switched_off_speaker_plays_what_was_queued_when_back(rig: Rig) -> None:
    (a,) = rig.ids(1)
    async with rig.speakers([a]) as sim, rig.gateway(ack_timeout=None) as gw:
        sim.power_cut(a)
        await gw.sink.wait_for(lambda s: (a, False) in s.statuses)
        # The broker takes the command (PUBACK) and keeps it in the speaker's session.
        assert await gw.send(5, a) == "5"
        assert gw.statuses(5) == []
        sim.power_on(a)
        await gw.sink.wait_for(lambda s: gw.statuses(5) == ["received", "playing", "played"])


async def test_speakers_switched_off_by_rate_say_offline(rig: Rig) -> None:
    ids = rig.ids(20)
    behaviour = Behaviour(offline_rate=0.3, seed=3)
    async with rig.speakers(ids, behaviour=behaviour) as sim, \
            rig.gateway(ack_timeout=None) as gw:
        off = {s.id for s in sim.speakers.values() if s.switched_off}
        assert 0 < len(off) < len(ids)
        await gw.sink.wait_for(lambda s: {sid for sid, on in s.statuses if not on} == off)


async def test_speaker_that_never_answers_counts_as_offline(rig: Rig) -> None:
    mute, ok = rig.ids(2)
    async with rig.speakers([mute, ok], mute={mute}) as sim, \
            rig.gateway(ack_timeout=0.3) as gw:
        await gw.sink.wait_for(lambda s: online(s, [mute, ok]))
        await gw.send(1, mute)
        await gw.send(2, ok)
        await gw.sink.wait_for(lambda s: gw.statuses(1) == ["unanswered"])
        (failed,) = [r for r in gw.sink.receipts if r["delivery_id"] == 1]
        assert failed["detail"] == f"speaker {mute} did not answer within 0.3s"
        assert gw.sink.statuses[-1] == (mute, False)  # so the village gets its fallback
        assert gw.statuses(2) == ["received", "playing", "played"]
        assert len(sim.speakers[mute].log.commands) == 1  # it did get the command
        # When it speaks again, it is online again.
        sim.speakers[mute].mute = False
        await gw.send(3, mute)
        await gw.sink.wait_for(lambda s: gw.statuses(3) == ["received", "playing", "played"])
        assert gw.sink.statuses[-1] == (mute, True)
    assert gw.adapter.counts["no_ack"] == 1


async def test_cancel_sends_stop_which_cuts_the_warning_short(rig: Rig) -> None:
    (a,) = rig.ids(1)
    async with rig.speakers([a], behaviour=Behaviour(play_seconds=30)) as sim, \
            rig.gateway() as gw:
        await gw.send(1, a, alert_id=9)
        await gw.sink.wait_for(lambda s: gw.statuses(1) == ["received", "playing"])
        await gw.send(2, a, alert_id=9, kind="cancel")
        await gw.sink.wait_for(lambda s: gw.statuses(1)[-1] == "failed"
                               and gw.statuses(2) == ["received"])
    stop = sim.speakers[a].log.commands[1]
    assert (stop.type, stop.alert_id, stop.delivery_id) == ("stop", 9, 2)
    (cut,) = [r for r in gw.sink.receipts if r["status"] == "failed"]
    assert cut["detail"] == "stopped while playing: warning lifted"
    assert gw.sink.acks == []  # nothing was played to the end


async def test_a_command_sent_twice_plays_once(rig: Rig) -> None:
    (a,) = rig.ids(1)
    async with rig.speakers([a]) as sim, rig.gateway() as gw:
        await gw.send(1, a)
        await gw.sink.wait_for(lambda s: gw.statuses(1) == ["received", "playing", "played"])
        await gw.send(1, a)  # e.g. re-sent after a reconnect
        await gw.sink.wait_for(lambda s: len(gw.statuses(1)) == 4)
    assert gw.statuses(1)[-1] == "played"  # it says how it ended, without playing again
    assert len(sim.speakers[a].log.commands) == 1
    assert sim.speakers[a].log.duplicates == 1


async def test_expired_warning_is_not_played(rig: Rig) -> None:
    (a,) = rig.ids(1)
    async with rig.speakers([a]), rig.gateway() as gw:
        await gw.send(1, a, expires=1_000_000.0)
        await gw.sink.wait_for(lambda s: gw.statuses(1) == ["received", "failed"])
    assert gw.sink.receipts[-1]["detail"] == "expired before playing"


async def test_malformed_payloads_are_counted_and_the_loop_survives(rig: Rig) -> None:
    (a,) = rig.ids(1)
    async with rig.gateway() as gw, rig.device(a) as device:
        ack, status = f"{rig.prefix}/speakers/{a}/ack", f"{rig.prefix}/speakers/{a}/status"
        for payload in (b"\xff\xfe", b"played", b"[1, 2]", b'{"delivery_id": 3}',
                        b'{"delivery_id": 3, "status": "exploded"}'):
            await device.publish(ack, payload, qos=1)
        await device.publish(status, b"maybe", qos=1)
        # Still listening: a good ack after the garbage gets through.
        await device.publish(ack, json.dumps({"delivery_id": 3, "status": "played"}), qos=1)
        await gw.sink.wait_for(lambda s: len(s.acks) == 1)
    assert gw.adapter.metrics() == {"malformed": 6, "acks": 1, "connections": 1}
    assert gw.statuses(3) == ["played"]
    assert gw.sink.statuses == []


async def test_unknown_ids_go_to_the_sink_which_decides(rig: Rig) -> None:
    (a,) = rig.ids(1)
    async with rig.gateway() as gw, rig.device(a) as device:
        ack = f"{rig.prefix}/speakers/{a}/ack"
        await device.publish(ack, b'{"delivery_id": 987654321, "status": "played"}', qos=1)
        await device.publish(ack, b'{"delivery_id": "X-17", "status": "received"}', qos=1)
        await gw.sink.wait_for(lambda s: len(s.receipts) == 2)
    # The adapter does not know every delivery (another process may have sent it): it
    # passes ids on, and the gateway's sink records the ones nobody knows as rejected.
    assert [(r["delivery_id"], r["provider_ref"], r["status"]) for r in gw.sink.receipts] == [
        (987654321, None, "played"), (None, "X-17", "received")]


async def test_ack_from_another_speaker_is_ignored(rig: Rig) -> None:
    a, b = rig.ids(2)
    async with rig.speakers([a], behaviour=Behaviour(play_seconds=30)), \
            rig.gateway() as gw, rig.device(b) as device:
        await gw.send(1, a)
        await gw.sink.wait_for(lambda s: gw.statuses(1) == ["received", "playing"])
        await device.publish(f"{rig.prefix}/speakers/{b}/ack",
                             b'{"delivery_id": 1, "status": "played"}', qos=1)
        await gw.sink.wait_for(lambda s: s.acks or gw.adapter.counts["wrong_speaker"] == 1)
    assert gw.sink.acks == []
    assert gw.statuses(1) == ["received", "playing"]


async def test_speaker_ids_that_are_not_one_topic_level_fail_permanently(rig: Rig) -> None:
    async with rig.gateway() as gw:
        for bad in ("a/b", "spk+", "#"):
            with pytest.raises(PermanentError, match="topics"):
                await gw.send(1, bad)
    assert gw.adapter.counts["commands"] == 0


async def test_unreachable_broker_is_transient_and_start_does_not_hang(rig: Rig) -> None:
    rig.port = free_port()  # nothing listens there
    async with rig.gateway(connect_wait=0.3) as gw:
        assert not gw.adapter.link.connected.is_set()
        with pytest.raises(TransientError, match="no connection"):
            await gw.send(1, rig.ids(1)[0])


async def test_in_flight_commands_stay_within_the_brokers_receive_maximum(rig: Rig) -> None:
    ids = rig.ids(300)
    async with rig.gateway(max_inflight=1000, ack_timeout=None) as gw:
        # The local broker announces Mosquitto's default Receive Maximum, 20.
        assert gw.adapter.link.window == 20
        peak = 0
        sending = asyncio.gather(*(gw.send(i + 1, sid) for i, sid in enumerate(ids)))
        while not sending.done():
            peak = max(peak, gw.adapter.link.in_flight)
            await asyncio.sleep(0)
        await sending
    assert 1 <= peak <= 20
    assert gw.adapter.counts["commands"] == len(ids)
    assert gw.adapter.link.in_flight == 0
