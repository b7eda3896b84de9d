"""The adapter and the simulated speakers on a private Mosquitto running the shipped
``config/mosquitto`` (passwords, per-speaker ACL, persistence): what the ACL forbids, wrong
credentials, TLS, and the broker restarting in the middle of a fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from warngate_mqtt import MqttSpeakerAdapter
from warngate_mqtt.connection import BrokerAddress, Link, LinkConfig, PublishRefused
from warngate_mqtt.payloads import command_for
from warngate_mqtt.speaker_sim import Behaviour, SpeakerSimulator
from warngate_mqtt.testing import default_acl
from warngate_mqtt.testing import throwaway_mosquitto as packaged_mosquitto

from tests.mosquitto import CONFIG, GATEWAY_USER, Mosquitto, free_port, throwaway_mosquitto
from warngate.adapter import AuthError, Outbound, TransientError
from warngate.settings import AdapterSettings
from warngate.testing import RecordingSink

pytestmark = pytest.mark.mqtt

GW_PASSWORD = "gateway-口令-1"
SPEAKER_PASSWORD = "speaker-secret"
PREFIX = "warngate/v1"  # what the shipped ACL allows


def users(ids: Sequence[str]) -> dict[str, str]:
    return {GATEWAY_USER: GW_PASSWORD, **{sid: SPEAKER_PASSWORD for sid in ids}}


def warning(did: int, speaker_id: str, **kw: Any) -> Outbound:
    return Outbound(delivery_id=did, alert_id=1, kind="alert", channel="speaker",
                    address=speaker_id, level="red", headline="山洪红色预警",
                    text="请立即撤离到安全地带。", **kw)


@contextlib.asynccontextmanager
async def gateway(broker: Mosquitto, monkeypatch: pytest.MonkeyPatch, *,
                  password: str = GW_PASSWORD, port: int | None = None,
                  **options: Any) -> AsyncIterator[tuple[MqttSpeakerAdapter, RecordingSink]]:
    monkeypatch.setenv("WARNGATE_MQTT_PASSWORD", password)
    adapter = MqttSpeakerAdapter(AdapterSettings(
        name="speaker", type="mqtt-speaker", channel="speaker",
        options={"host": broker.host, "port": port or broker.port, "username": GATEWAY_USER,
                 "client_id": "gw-test", "connect_wait": 5, **options}))
    sink = RecordingSink()
    await adapter.start(sink)
    try:
        yield adapter, sink
    finally:
        await adapter.stop()


def speakers(broker: Mosquitto, ids: Sequence[str], **kw: Any) -> SpeakerSimulator:
    return SpeakerSimulator(host=broker.host, port=broker.port, speaker_ids=ids,
                            password=SPEAKER_PASSWORD, **kw)


def played(sink: RecordingSink) -> set[int]:
    return {r["delivery_id"] for r in sink.receipts if r["status"] == "played"}


# -- the ACL ----------------------------------------------------------------------------------

async def test_a_speaker_reads_only_its_own_commands_and_writes_only_its_own_acks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = "spk-a", "spk-b"
    seen: list[tuple[str, int]] = []
    async with throwaway_mosquitto(users([a, b])) as broker, \
            speakers(broker, [b]) as sim, gateway(broker, monkeypatch) as (adapter, sink):
        # Speaker a, as a plain client with a's credentials, tries to listen to b's
        # commands, to every speaker's commands, and to its own.
        nosy = Link(
            LinkConfig(broker=BrokerAddress(broker.host, broker.port, username=a,
                                            password=SPEAKER_PASSWORD),
                       client_id=a, subscriptions=(f"{PREFIX}/speakers/{b}/cmd",
                                                   f"{PREFIX}/speakers/+/cmd",
                                                   f"{PREFIX}/speakers/{a}/cmd")),
            on_message=lambda topic, payload, _: seen.append(
                (topic, json.loads(payload)["delivery_id"])))
        task = asyncio.create_task(nosy.run())
        try:
            await asyncio.wait_for(nosy.connected.wait(), 10)
            await adapter.send(warning(1, b))
            await adapter.send(warning(2, a))  # after b's: a barrier for what a may see
            await sink.wait_for(lambda s: 1 in played(s))
            await _until(lambda: any(did == 2 for _, did in seen))
            # a forges b's ack and b's status, and a command to b: the broker refuses each
            # (MQTT 5 reason code 0x87, not authorised)...
            for topic, payload in (
                (f"{PREFIX}/speakers/{b}/ack",
                 b'{"delivery_id": 1, "status": "failed", "detail": "forged"}'),
                (f"{PREFIX}/speakers/{b}/status", b"offline"),
                (f"{PREFIX}/speakers/{b}/cmd", command_for(warning(66, b)).encode()),
            ):
                with pytest.raises(PublishRefused) as refused:
                    await nosy.publish(topic, payload)
                assert refused.value.code == 0x87, topic
            # ...while a's own ack gets through, after them.
            await nosy.publish(f"{PREFIX}/speakers/{a}/ack",
                               b'{"delivery_id": 2, "status": "played"}')
            await sink.wait_for(lambda s: 2 in played(s))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # The broker delivers one client's messages in order: had b's command been readable by
    # a, it would have come before a's own (subscribed twice: delivered twice).
    assert seen == [(f"{PREFIX}/speakers/{a}/cmd", 2)] * 2
    assert [r["detail"] for r in sink.receipts if r["delivery_id"] == 1] == [None] * 3
    assert (b, False) not in sink.statuses
    assert [c.delivery_id for c in sim.speakers[b].log.commands] == [1]


async def test_wrong_gateway_password_is_an_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async with throwaway_mosquitto(users([])) as broker, \
            gateway(broker, monkeypatch, password="wrong", connect_wait=0.5) as (adapter, _):
        with pytest.raises(AuthError, match="refused"):
            await adapter.send(warning(1, "spk-x"))
        assert adapter.link.refused


async def test_gateway_user_missing_from_the_acl_is_an_auth_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with throwaway_mosquitto({**users([]), "warngate-2": GW_PASSWORD}) as broker, \
            gateway(broker, monkeypatch, username="warngate-2") as (adapter, _):
        with pytest.raises(AuthError, match="ACL does not let 'warngate-2' publish to "
                                            "warngate/v1/speakers/spk-x/cmd"):
            await adapter.send(warning(1, "spk-x"))


async def test_speaker_with_a_wrong_password_never_gets_in() -> None:
    async with throwaway_mosquitto(users(["spk-a"])) as broker:
        sim = SpeakerSimulator(host=broker.host, port=broker.port, speaker_ids=["spk-a"],
                               password="nope", ready_within=1.0)
        with pytest.raises(TimeoutError, match="refused"):
            async with sim:
                pass


async def test_password_file_written_without_mosquitto_passwd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with throwaway_mosquitto(users(["spk-甲"]), mosquitto_passwd=False) as broker, \
            speakers(broker, ["spk-甲"]), gateway(broker, monkeypatch) as (adapter, sink):
        await adapter.send(warning(1, "spk-甲"))
        await sink.wait_for(lambda s: played(s) == {1})


# -- TLS --------------------------------------------------------------------------------------

def make_certs(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, via openssl."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for name in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.crt", "-subj", f"/CN=warngate {name}", "-days", "2")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    for name, cn in (("server", "127.0.0.1"), ("client", "warngate")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
# paho does not close the socket of a failed TLS handshake (paho/mqtt/client.py,
# _ssl_wrap_socket); it is closed when collected, with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*SSLSocket:pytest.PytestUnraisableExceptionWarning")
async def test_tls_with_a_private_ca_and_a_client_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_certs(tmp_path)
    tls_port = free_port()
    extra = (f"listener {tls_port} 127.0.0.1\nuse_username_as_clientid true\n"
             f"cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\n"
             f"keyfile {tmp_path / 'server.key'}\nrequire_certificate true\n")
    good = {"ca_file": str(tmp_path / "ca.crt"), "cert_file": str(tmp_path / "client.crt"),
            "key_file": str(tmp_path / "client.key")}
    async with throwaway_mosquitto(users(["spk-a"]), extra=extra) as broker, \
            speakers(broker, ["spk-a"]):
        async with gateway(broker, monkeypatch, port=tls_port, tls=good) as (adapter, sink):
            assert str(adapter.link.config.broker).startswith("mqtts://warngate@")
            await adapter.send(warning(1, "spk-a"))
            await sink.wait_for(lambda s: played(s) == {1})
        # A broker certificate from a CA we do not trust: no connection.
        wrong_ca = {**good, "ca_file": str(tmp_path / "other-ca.crt")}
        async with gateway(broker, monkeypatch, port=tls_port, tls=wrong_ca,
                           connect_wait=0.5) as (adapter, _):
            with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):
                await adapter.send(warning(2, "spk-a"))
        # No client certificate: the broker refuses the handshake.
        no_cert = {"ca_file": good["ca_file"]}
        async with gateway(broker, monkeypatch, port=tls_port, tls=no_cert,
                           connect_wait=0.5) as (adapter, _):
            with pytest.raises(TransientError, match="no connection"):
                await adapter.send(warning(3, "spk-a"))


# -- the broker restarting --------------------------------------------------------------------

async def send_all(adapter: MqttSpeakerAdapter, messages: Sequence[Outbound], *,
                   workers: int) -> Counter[str]:
    """What a dispatch lane does: concurrent sends; a transient failure is sent again."""
    queue: asyncio.Queue[Outbound] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)
    outcome: Counter[str] = Counter()

    async def work() -> None:
        while not queue.empty():
            message = queue.get_nowait()
            try:
                await adapter.send(message)
                outcome["sent"] += 1
            except TransientError:
                outcome["transient"] += 1
                await asyncio.sleep(0.2)
                queue.put_nowait(message)

    await asyncio.gather(*(work() for _ in range(workers)))
    return outcome


@pytest.mark.parametrize(("down_for", "publish_timeout"), [
    # Back at once: commands waiting for their PUBACK are sent again on the new connection.
    (0.0, 15.0),
    # Down longer than the publish timeout: sends fail as transient and are sent again by
    # the lane (here: send_all), some after the broker had already taken them.
    (1.5, 0.5),
], ids=["queued", "transient"])
async def test_broker_restart_mid_fan_out_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, down_for: float, publish_timeout: float,
) -> None:
    ids = [f"spk-{i:03d}" for i in range(60)]
    messages = [warning(n * len(ids) + i + 1, sid) for n in range(10)
                for i, sid in enumerate(ids)]
    async with throwaway_mosquitto(users(ids)) as broker, speakers(broker, ids) as sim, \
            gateway(broker, monkeypatch, connect_wait=1.0, ack_timeout=None,
                    publish_timeout=publish_timeout) as (adapter, sink):
        fan_out = asyncio.create_task(send_all(adapter, messages, workers=50))
        # Restart once a fifth of the commands are out and their acks are streaming back.
        await _until(lambda: adapter.counts["commands"] >= len(messages) // 5, every=0.001)
        await broker.restart(down_for=down_for)
        outcome = await fan_out
        await sink.wait_for(lambda s: len(played(s)) == len(messages), within=60)
        assert adapter.link.connections == 2
    assert played(sink) == {m.delivery_id for m in messages}
    assert outcome["sent"] == len(messages)
    assert (outcome["transient"] > 0) == (publish_timeout < down_for)
    # Every speaker played each of its warnings once, even those it was sent twice (it
    # answers a repeat with how it ended instead).
    for i, sid in enumerate(ids):
        got = [c.delivery_id for c in sim.speakers[sid].log.commands]
        assert sorted(got) == [n * len(ids) + i + 1 for n in range(10)]


async def test_acks_sent_while_the_gateway_is_away_arrive_when_it_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = ["spk-a"]
    async with throwaway_mosquitto(users(ids)) as broker, \
            speakers(broker, ids, behaviour=Behaviour(play_seconds=1.0)) as sim:
        async with gateway(broker, monkeypatch, ack_timeout=None) as (adapter, sink):
            await adapter.send(warning(1, "spk-a"))
            await sink.wait_for(lambda s: "playing" in {r["status"] for r in s.receipts})
        # The gateway stopped (a restart) while the speaker plays; it answers "played" to
        # nobody. The broker keeps the ack in the gateway's persistent session.
        await _until(lambda: sim.counts()["played"] == 1)
        async with gateway(broker, monkeypatch, ack_timeout=None) as (_, again):
            await again.wait_for(lambda s: played(s) == {1})


async def test_after_a_broker_crash_everyone_reconnects_and_resubscribes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL, unlike a clean stop, saves nothing: the broker forgets the sessions made
    since its last autosave, so a command published before a speaker is back and subscribed
    again has nobody to go to (the ack timeout then reports the speaker offline). Nobody
    relies on the lost sessions otherwise: the gateway and the speakers subscribe again on
    every connection, so what is sent once they are back arrives."""
    ids = ["spk-a", "spk-b"]
    async with throwaway_mosquitto(users(ids)) as broker, speakers(broker, ids) as sim, \
            gateway(broker, monkeypatch, connect_wait=3.0) as (adapter, sink):
        await broker.stop(signal.SIGKILL)
        await broker.start()
        links = [adapter.link, *(s.link for s in sim.speakers.values())]
        await _until(lambda: all(link.connections == 2 and link.connected.is_set()
                                 for link in links))
        for i, sid in enumerate(ids, 1):
            await adapter.send(warning(i, sid))
        await sink.wait_for(lambda s: played(s) == {1, 2}, within=15)


async def _until(check: Any, within: float = 30.0, every: float = 0.01) -> None:
    """Poll ``check`` (a ceiling for a hung test, not a timing claim)."""
    async with asyncio.timeout(within):
        while True:
            if check():
                return
            await asyncio.sleep(every)


# -- the broker helper shipped in warngate_mqtt.testing ----------------------------------------

def test_the_packaged_acl_is_the_shipped_one() -> None:
    # A third party's tests get this ACL without the repository's config directory.
    shipped = (CONFIG / "acl").read_text(encoding="utf-8")
    rules = [line.split() for line in shipped.splitlines() if line and not line.startswith("#")]
    assert [line.split() for line in default_acl().splitlines() if line] == rules


async def test_a_packaged_broker_without_the_repository_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with packaged_mosquitto(users(["spk-a"])) as broker, \
            speakers(broker, ["spk-a"]), gateway(broker, monkeypatch) as (adapter, sink):
        await adapter.send(warning(1, "spk-a"))
        await sink.wait_for(lambda s: 1 in played(s))
