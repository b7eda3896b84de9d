"""The MQTT contract in code: topics, command/ack/status payloads, adapter options and
Mosquitto password lines. No broker."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from warngate_mqtt import MqttSpeakerAdapter
from warngate_mqtt.options import MqttOptions
from warngate_mqtt.passwords import check_password, hash_password, write_password_file
from warngate_mqtt.payloads import (
    Ack,
    Command,
    PayloadError,
    command_for,
    command_payload,
    parse_ack,
    parse_command,
    parse_status,
)
from warngate_mqtt.topics import TopicError, Topics, check_prefix, check_speaker_id

from warngate.adapter import AdapterConfigError, Outbound, available_adapters, load_adapter
from warngate.settings import AdapterSettings


def outbound(**kw: Any) -> Outbound:
    base: dict[str, Any] = {
        "delivery_id": 41, "alert_id": 7, "kind": "alert", "channel": "speaker",
        "address": "spk-339901001001", "level": "red", "headline": "夏溪县气象台发布暴雨红色预警",
        "text": "预计未来3小时内将出现50毫米以上降水，请立即转移。", "expires": 1_800_000_000.5,
    }
    return Outbound(**{**base, **kw})


# -- topics --------------------------------------------------------------------------------

def test_topics_follow_the_contract() -> None:
    t = Topics()
    assert t.cmd("spk-1") == "warngate/v1/speakers/spk-1/cmd"
    assert t.ack("spk-1") == "warngate/v1/speakers/spk-1/ack"
    assert t.status("spk-1") == "warngate/v1/speakers/spk-1/status"
    assert t.all_acks == "warngate/v1/speakers/+/ack"
    assert t.all_statuses == "warngate/v1/speakers/+/status"
    assert Topics("/county/339901/").cmd("a") == "county/339901/speakers/a/cmd"


def test_topic_parse() -> None:
    t = Topics("x/y")
    assert t.parse("x/y/speakers/喇叭-1/ack") == ("喇叭-1", "ack")
    assert t.parse("x/y/speakers/s/status") == ("s", "status")
    for other in ("x/y/speakers/s/cmd", "x/y/speakers//ack", "x/y/speakers/s/ack/more",
                  "x/z/speakers/s/ack", "x/y/speakers/s", "elsewhere"):
        assert t.parse(other) is None, other


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "a b", "$sys", "x" * 65, "a\x00"])
def test_speaker_ids_that_would_reach_other_topics_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        check_speaker_id(bad)


def test_chinese_speaker_ids_are_fine() -> None:
    assert check_speaker_id("夏溪村喇叭1") == "夏溪村喇叭1"


@pytest.mark.parametrize("bad", ["", "/", "a/+/b", "a/#", "a//b"])
def test_bad_prefixes(bad: str) -> None:
    with pytest.raises(TopicError):
        check_prefix(bad)


# -- commands ------------------------------------------------------------------------------

def test_play_command_has_exactly_the_contract_keys() -> None:
    data = json.loads(command_for(outbound()).encode())
    assert data == {
        "type": "play", "delivery_id": 41, "alert_id": 7, "level": "red",
        "text": "夏溪县气象台发布暴雨红色预警。预计未来3小时内将出现50毫米以上降水，请立即转移。",
        "lang": "zh-CN", "repeat": 1, "expires": 1_800_000_000.5,
    }


def test_the_fast_encoder_writes_the_same_bytes() -> None:
    for m in (outbound(), outbound(kind="cancel", expires=None), outbound(repeat=4)):
        assert command_payload(m, repeat=2) == command_for(m, repeat=2).encode()


def test_chinese_is_sent_as_utf8_not_escaped() -> None:
    raw = command_for(outbound()).encode()
    assert "暴雨红色预警".encode() in raw


def test_cancel_becomes_stop() -> None:
    c = command_for(outbound(kind="cancel", headline="【解除】暴雨红色预警",
                             text="暴雨红色预警已解除。", expires=None))
    assert c.type == "stop"
    assert json.loads(c.encode())["expires"] is None


def test_repeat_option_and_message_repeat() -> None:
    assert command_for(outbound(), repeat=3).repeat == 3
    assert command_for(outbound(repeat=5), repeat=3).repeat == 5


def test_text_not_doubled_when_body_starts_with_headline() -> None:
    c = command_for(outbound(headline="暴雨预警", text="暴雨预警：请转移"))
    assert c.text == "暴雨预警：请转移"
    assert command_for(outbound(text="")).text == "夏溪县气象台发布暴雨红色预警"


@given(
    delivery_id=st.integers(min_value=1, max_value=2**53),
    alert_id=st.integers(min_value=1, max_value=2**31),
    text=st.text(),
    level=st.sampled_from(["blue", "yellow", "orange", "red"]),
    kind=st.sampled_from(["play", "stop"]),
    repeat=st.integers(min_value=1, max_value=10),
    expires=st.none() | st.floats(min_value=0, max_value=4e9),
)
def test_commands_round_trip(delivery_id: int, alert_id: int, text: str, level: str,
                             kind: str, repeat: int, expires: float | None) -> None:
    c = Command(type=kind, delivery_id=delivery_id, alert_id=alert_id,  # type: ignore[arg-type]
                level=level, text=text, repeat=repeat, expires=expires)
    assert parse_command(c.encode()) == c


@pytest.mark.parametrize(("payload", "says"), [
    (b"\xff\xfe", "not UTF-8"),
    (b"{", "not JSON"),
    (b"[]", "JSON object"),
    (b'{"type": "shout"}', "'type'"),
    (b'{"type": "play", "delivery_id": 1, "alert_id": 1, "level": "purple", "text": ""}',
     "'level'"),
    (b'{"type": "play", "delivery_id": "1", "alert_id": 1, "level": "red", "text": ""}',
     "'delivery_id'"),
    (b'{"type": "play", "delivery_id": 1, "alert_id": 1, "level": "red", "text": "",'
     b' "repeat": 0}', "'repeat'"),
])
def test_bad_commands_say_what_is_wrong(payload: bytes, says: str) -> None:
    with pytest.raises(PayloadError, match=says):
        parse_command(payload)


# -- acks and statuses ---------------------------------------------------------------------

def test_acks() -> None:
    assert parse_ack(b'{"delivery_id": 5, "status": "played"}') == Ack(5, None, "played")
    assert parse_ack('{"delivery_id": "12", "status": "failed", "detail": "功放故障"}'
                     .encode()) == Ack(12, None, "failed", "功放故障")
    # A non-numeric id is kept for the sink to report as unknown, not dropped here.
    assert parse_ack(b'{"delivery_id": "abc", "status": "received"}') == Ack(
        None, "abc", "received")
    assert parse_ack(b'{"delivery_id": 1, "status": "playing", "detail": {"vol": 9}}'
                     ).detail == '{"vol": 9}'


def test_ack_encode_round_trips() -> None:
    for ack in (Ack(5, None, "played"), Ack(None, "x-1", "failed", "过热")):
        assert parse_ack(ack.encode()) == ack


@pytest.mark.parametrize(("payload", "says"), [
    (b"played", "not JSON"),
    (b'{"status": "played"}', "'delivery_id'"),
    (b'{"delivery_id": true, "status": "played"}', "'delivery_id'"),
    (b'{"delivery_id": 1.5, "status": "played"}', "'delivery_id'"),
    (b'{"delivery_id": 1, "status": "done"}', "'status'"),
    (b'{"delivery_id": 1}', "'status'"),
])
def test_bad_acks_say_what_is_wrong(payload: bytes, says: str) -> None:
    with pytest.raises(PayloadError, match=says):
        parse_ack(payload)


def test_statuses() -> None:
    assert parse_status(b"online") is True
    assert parse_status(b"offline\n") is False
    assert parse_status(b'"offline"') is False
    assert parse_status(b"") is None  # a retained status being deleted
    for bad in (b"on", b'{"status": "online"}', b"\xff"):
        with pytest.raises(PayloadError):
            parse_status(bad)


# -- options -------------------------------------------------------------------------------

def settings(**options: Any) -> AdapterSettings:
    return AdapterSettings(name="speaker", type="mqtt-speaker", channel="speaker",
                           options=options)


def test_entry_point_loads_the_adapter() -> None:
    assert available_adapters()["mqtt-speaker"].load() is MqttSpeakerAdapter
    adapter = load_adapter(settings(host="broker.example", client_id="gw-1"))
    assert isinstance(adapter, MqttSpeakerAdapter)
    assert adapter.link.config.broker.port == 1883
    assert adapter.link.config.client_id == "gw-1"
    assert adapter.link.config.subscriptions == ("warngate/v1/speakers/+/ack",
                                                  "warngate/v1/speakers/+/status")


def test_only_the_speaker_channel() -> None:
    with pytest.raises(AdapterConfigError, match="serves"):
        load_adapter(AdapterSettings(name="x", type="mqtt-speaker", channel="sms"))


def test_bad_options_are_named() -> None:
    with pytest.raises(AdapterConfigError, match=r"options\.port.*options\.prefix"):
        MqttSpeakerAdapter(settings(port=0, prefix="a/#"))
    with pytest.raises(AdapterConfigError, match=r"options\.pasword"):
        MqttSpeakerAdapter(settings(pasword="x"))


def test_durations_and_defaults() -> None:
    o = MqttOptions.model_validate({"session_expiry": "2h", "ack_timeout": "90s"})
    assert (o.session_expiry, o.ack_timeout) == (7200.0, 90.0)
    assert MqttOptions.model_validate({"tls": {}}).broker_port == 8883
    assert MqttOptions().client_id.startswith("warngate-")


def test_password_from_environment_or_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARNGATE_MQTT_PASSWORD", "from-env")
    a = MqttSpeakerAdapter(settings(username="warngate"))
    assert a.link.config.broker.password == "from-env"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n", encoding="utf-8")
    b = MqttSpeakerAdapter(settings(username="warngate", password_file=str(secret)))
    assert b.link.config.broker.password == "from-file"
    with pytest.raises(AdapterConfigError, match="password_file"):
        MqttSpeakerAdapter(settings(username="warngate", password_file=str(tmp_path / "no")))
    # No user name: no password sent, even if the variable is set.
    assert MqttSpeakerAdapter(settings()).link.config.broker.password is None


def test_tls_files_must_exist(tmp_path: Path) -> None:
    with pytest.raises(AdapterConfigError, match=r"tls\.ca_file: no such file"):
        MqttSpeakerAdapter(settings(tls={"ca_file": str(tmp_path / "ca.pem")}))
    with pytest.raises(AdapterConfigError, match="key_file needs"):
        key = tmp_path / "k.pem"
        key.write_text("x", encoding="utf-8")
        MqttSpeakerAdapter(settings(tls={"key_file": str(key)}))
    adapter = MqttSpeakerAdapter(settings(tls={}))
    assert adapter.link.config.broker.tls is not None
    assert str(adapter.link.config.broker).startswith("mqtts://")


# -- password files ------------------------------------------------------------------------

def test_password_hash_matches_mosquitto_format() -> None:
    # Produced by mosquitto_passwd 2.0.11 for "secret".
    line = ("a:$7$101$iZ5362gbbNyf8MWW$+8iyTTC+iGEmH3Q/kWnDJr58tWsBnPz0Bt2Wxm9iHrI9K5chO3K4HL18"
            "7pyq7CFhxpIFC+Cs/9cH/T5h2L72zw==")
    assert check_password(line, "a", "secret")
    assert not check_password(line, "a", "Secret")
    assert not check_password(line, "b", "secret")
    salt = base64.b64decode("iZ5362gbbNyf8MWW")
    assert "a:" + hash_password("secret", salt=salt) == line


def test_password_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    assert write_password_file(path, [("warngate", "gw"), ("spk-1", "口令")]) == 2
    lines = path.read_text(encoding="utf-8").splitlines()
    assert check_password(lines[1], "spk-1", "口令")
    assert path.stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="user name"):
        write_password_file(path, [("a:b", "x")])
