"""Adapter configuration, reply words, TwiML and error classification: no network."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.base.exceptions import TwilioRestException
from warngate_twilio import TwilioSmsAdapter, TwilioVoiceAdapter
from warngate_twilio.rest import BaseUrlHttpClient, classify, form_encode, retry_after
from warngate_twilio.sms import normalise_reply

from warngate.adapter import (
    AdapterConfigError,
    AuthError,
    Outbound,
    PermanentError,
    TransientError,
    available_adapters,
    load_adapter,
)
from warngate.settings import AdapterSettings
from warngate.testing import RecordingSink

SID = "AC" + "1" * 32


def sms_settings(**options: Any) -> AdapterSettings:
    base = {"account_sid": SID, "from_number": "+15005550006"}
    return AdapterSettings(name="sms", type="twilio-sms", channel="sms",
                           options={**base, **options})


def voice_settings(**options: Any) -> AdapterSettings:
    base = {"account_sid": SID, "from_number": "+15005550006"}
    return AdapterSettings(name="voice", type="twilio-voice", channel="voice",
                           options={**base, **options})


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "secret-token")
    return "secret-token"


def test_entry_points_are_registered() -> None:
    found = available_adapters()
    assert found["twilio-sms"].load() is TwilioSmsAdapter
    assert found["twilio-voice"].load() is TwilioVoiceAdapter


def test_loaded_by_name_with_context(token: str) -> None:
    adapter = load_adapter(sms_settings(), public_url="https://yj.example.cn/",
                           unrelated="ignored")
    assert isinstance(adapter, TwilioSmsAdapter)
    assert adapter.hook_url("status", d=7) == "https://yj.example.cn/hooks/twilio/sms/status?d=7"


def test_missing_token_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    with pytest.raises(AdapterConfigError, match="TWILIO_AUTH_TOKEN"):
        TwilioSmsAdapter(sms_settings(), public_url="http://x")


def test_token_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    adapter = TwilioSmsAdapter(sms_settings(auth_token_file=str(secret)), public_url="http://x")
    assert adapter.guard.url("/p") == "http://x/p"
    with pytest.raises(AdapterConfigError, match="cannot read the auth token file"):
        TwilioSmsAdapter(sms_settings(auth_token_file=str(tmp_path / "nope")),
                         public_url="http://x")


def test_api_key_needs_its_secret(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_API_KEY_SECRET", raising=False)
    with pytest.raises(AdapterConfigError, match="TWILIO_API_KEY_SECRET"):
        TwilioSmsAdapter(sms_settings(api_key_sid="SK" + "2" * 32), public_url="http://x")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"from_number": None}, "exactly one of from_number and messaging_service_sid"),
        ({"messaging_service_sid": "MG" + "3" * 32}, "exactly one"),
        ({"from_number": "13800138000"}, "not an E.164 number"),
        ({"account_sid": "AC123"}, "options.account_sid"),
        ({"max_segments": 0}, "options.max_segments"),
        ({"colour": "red"}, "options.colour"),
    ],
)
def test_bad_options_are_named(token: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(AdapterConfigError, match=message):
        TwilioSmsAdapter(sms_settings(**options), public_url="http://x")


def test_needs_a_public_url(token: str) -> None:
    with pytest.raises(AdapterConfigError, match="public_url"):
        TwilioSmsAdapter(sms_settings(), public_url=None)
    adapter = TwilioSmsAdapter(sms_settings(webhook_base_url="https://hooks.example.cn/wg"))
    assert adapter.hook_url("inbound") == "https://hooks.example.cn/wg/hooks/twilio/sms/inbound"


def test_name_must_be_url_safe(token: str) -> None:
    settings = AdapterSettings(name="短信 网关", type="twilio-sms", channel="sms",
                               options={"account_sid": SID, "from_number": "+15005550006"})
    with pytest.raises(AdapterConfigError, match="letters, digits"):
        TwilioSmsAdapter(settings, public_url="http://x")


def test_wrong_channel_is_refused(token: str) -> None:
    settings = AdapterSettings(name="sms", type="twilio-sms", channel="voice",
                               options={"account_sid": SID, "from_number": "+15005550006"})
    with pytest.raises(AdapterConfigError, match="serves"):
        load_adapter(settings, public_url="http://x")


@pytest.mark.parametrize(
    ("reply", "normal"),
    [(" 1 ", "1"), ("１", "1"), ("收到！", "收到"), ("OK.", "ok"), ("ＯＫ", "ok"),
     ("【确认】", "确认"), ("好的～", "好的"), ("Yes!", "yes"), ("家里进水了", "家里进水了")],
)
def test_reply_normalisation(reply: str, normal: str) -> None:
    assert normalise_reply(reply) == normal


def outbound(**kw: Any) -> Outbound:
    base: dict[str, Any] = {
        "delivery_id": 42, "alert_id": 1, "kind": "alert", "channel": "voice",
        "address": "+8617000000010", "level": "red", "headline": "暴雨红色预警",
        "text": "请立即转移到安全地带。", "ack_url": "http://x/ack/2a-abc", "ack_required": True,
    }
    return Outbound(**{**base, **kw})


def test_call_twiml_reads_in_mandarin_repeats_and_asks_for_1(token: str) -> None:
    adapter = TwilioVoiceAdapter(voice_settings(voice="Google.cmn-CN-Standard-A"),
                                 public_url="https://yj.example.cn")
    xml = adapter.call_twiml(outbound())
    assert ('<Gather action="https://yj.example.cn/hooks/twilio/voice/gather?d=42&amp;n=1" '
            'actionOnEmptyResult="false" method="POST" numDigits="1" timeout="8">') in xml
    assert ('<Say language="cmn-CN" loop="2" voice="Google.cmn-CN-Standard-A">'
            '暴雨红色预警。请立即转移到安全地带。</Say>') in xml
    assert "收到请按1键确认。" in xml


def test_call_without_ack_has_no_gather(token: str) -> None:
    adapter = TwilioVoiceAdapter(voice_settings(), public_url="https://yj.example.cn")
    assert "<Gather" not in adapter.call_twiml(outbound(ack_required=False))
    assert "<Gather" not in adapter.call_twiml(outbound(kind="cancel"))


def test_overlong_call_text_is_cut_to_twilio_limit(token: str) -> None:
    adapter = TwilioVoiceAdapter(voice_settings(), public_url="https://yj.example.cn")
    xml = adapter.call_twiml(outbound(text="请注意防范。" * 2000))
    assert len(xml) <= 4000
    assert "……</Say>" in xml and "收到请按1键确认。" in xml


async def test_expired_warning_is_not_sent(token: str) -> None:
    adapter = TwilioSmsAdapter(sms_settings(), public_url="http://x")
    await adapter.start(RecordingSink())  # send() refuses an adapter not started
    try:
        with pytest.raises(PermanentError, match="expired"):
            await adapter.send(outbound(channel="sms", expires=time.time() - 1))
    finally:
        await adapter.stop()


def test_retry_after_forms() -> None:
    assert retry_after("120") == 120.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    got = retry_after(later)
    assert got is not None and 55 <= got <= 61


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [(400, 21211, PermanentError), (400, 21614, PermanentError), (400, 21610, PermanentError),
     (401, 20003, AuthError), (400, 21606, AuthError), (429, 20429, TransientError),
     (503, None, TransientError), (400, 21602, PermanentError)],
)
def test_classify(status: int, code: int | None, kind: type[Exception]) -> None:
    error = classify(TwilioRestException(status, "uri", "msg", code=code))
    assert isinstance(error, kind)
    if code:
        assert str(code) in str(error)


async def test_base_url_moves_the_api_host() -> None:
    http = BaseUrlHttpClient(base_url="http://127.0.0.1:9999/prefix/", timeout=1,
                             max_connections=1)
    try:
        assert http.target("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?x=1") \
            == "http://127.0.0.1:9999/prefix/2010-04-01/Accounts/AC1/Messages.json?x=1"
    finally:
        await http.close()


@given(st.dictionaries(st.text(min_size=1, max_size=20),
                       st.one_of(st.text(max_size=200),
                                 st.lists(st.text(max_size=20), min_size=1, max_size=3)),
                       max_size=8))
def test_form_encoding_reads_back_exactly(data: dict[str, Any]) -> None:
    decoded = parse_qsl(form_encode(data).decode("ascii"), keep_blank_values=True)
    expected = [(k, item) for k, v in data.items() for item in (v if isinstance(v, list) else [v])]
    assert decoded == expected


def test_call_twiml_is_per_delivery_even_from_cache(token: str) -> None:
    adapter = TwilioVoiceAdapter(voice_settings(), public_url="https://yj.example.cn")
    first, second = adapter.call_twiml(outbound()), adapter.call_twiml(outbound(delivery_id=43))
    assert "gather?d=42&amp;n=1" in first and "d=43" not in first
    assert "gather?d=43&amp;n=1" in second and "d=42" not in second
    assert first.replace("d=42", "d=43") == second
