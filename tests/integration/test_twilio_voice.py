"""The voice adapter through the real ``twilio`` library against the fake Twilio: the call's
TwiML, keys pressed during the call, and how each call ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from warngate_twilio import TwilioVoiceAdapter
from warngate_twilio.testing import AdapterRig, FakeTwilio, adapter_rig, twilio_options

from warngate.adapter import Outbound, PermanentError, ProviderEvent
from warngate.settings import AdapterSettings

TO = "+8617000000011"


Rig = AdapterRig[TwilioVoiceAdapter]


def call_for(delivery_id: int = 21, **kw: Any) -> Outbound:
    base: dict[str, Any] = {
        "delivery_id": delivery_id, "alert_id": 3, "kind": "alert", "channel": "voice",
        "address": TO, "level": "red", "headline": "夏溪县暴雨红色预警",
        "text": "请立即组织危险区域群众转移。", "ack_url": "http://yj.test/ack/15-abc",
        "ack_required": True,
    }
    return Outbound(**{**base, **kw})


def make_rig(fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch,
             **options: Any) -> contextlib.AbstractAsyncContextManager[Rig]:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", fake.auth_token)
    settings = AdapterSettings(name="voice", type="twilio-voice", channel="voice",
                               rate_per_second=5, options=twilio_options(fake, **options))
    return adapter_rig(TwilioVoiceAdapter, settings, fake)


@pytest.fixture
async def rig(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    async with FakeTwilio() as fake, make_rig(fake, monkeypatch) as r:
        yield r


async def test_call_is_placed_with_inline_twiml(rig: Rig) -> None:
    result = await rig.adapter.send(call_for())
    call = rig.fake.call(TO)
    assert result.provider_ref == call.sid and call.sid.startswith("CA")
    form = call.form
    assert form["From"] == "+15005550006" and form["Timeout"] == "30"
    assert form["StatusCallback"] == f"{rig.public_url}/hooks/twilio/voice/call-status?d=21"
    assert form["StatusCallbackMethod"] == "POST"
    twiml = form["Twiml"]
    assert ('<Say language="cmn-CN" loop="2" voice="Polly.Zhiyu">'
            '夏溪县暴雨红色预警。请立即组织危险区域群众转移。</Say>') in twiml
    assert rig.fake.gather_action(call) == f"{rig.public_url}/hooks/twilio/voice/gather?d=21&n=1"


async def test_pressing_1_acknowledges_once(rig: Rig) -> None:
    await rig.adapter.send(call_for())
    call = rig.fake.call(TO)
    for _ in range(2):  # Twilio retries the action when it thinks we missed it
        status, twiml = await rig.fake.press(call, "1")
        assert status == 200
        assert "已确认，谢谢。" in twiml and "<Hangup />" in twiml
    assert rig.sink.acks == [{"delivery_id": 21, "provider_ref": call.sid, "phone": None,
                              "via": "dtmf", "detail": None,
                              "event": ProviderEvent(rig.adapter.name, f"gather:{call.sid}:21")}]


async def test_wrong_key_asks_again_then_gives_up(rig: Rig) -> None:
    await rig.adapter.send(call_for())
    call = rig.fake.call(TO)
    status, twiml = await rig.fake.press(call, "2")
    assert status == 200 and 'gather?d=21&amp;n=2"' in twiml and "收到请按1键确认。" in twiml
    second = f"{rig.public_url}/hooks/twilio/voice/gather?d=21&n=2"
    status, twiml = await rig.fake.press(call, "9", action=second)
    assert "<Gather" not in twiml and "<Hangup />" in twiml
    assert rig.sink.acks == []
    # Still possible to confirm on the second prompt.
    await rig.fake.press(call, "1", action=second)
    assert [a["via"] for a in rig.sink.acks] == ["dtmf"]


@pytest.mark.parametrize(
    ("call_status", "receipt", "detail"),
    [("completed", "answered", "completed, 42s"), ("no-answer", "no_answer", "no-answer"),
     ("busy", "busy", "busy"), ("failed", "failed", "failed"),
     ("canceled", "failed", "canceled")],
)
async def test_call_outcomes_become_receipts(rig: Rig, call_status: str, receipt: str,
                                             detail: str) -> None:
    await rig.adapter.send(call_for())
    call = rig.fake.call(TO)
    duration = 42 if call_status == "completed" else 0
    for _ in range(2):
        status, _ = await rig.fake.call_status(call, call_status, duration=duration)
        assert status == 204
    assert rig.sink.receipts == [{"delivery_id": 21, "provider_ref": call.sid,
                                  "status": receipt, "detail": detail,
                                  "event": ProviderEvent(rig.adapter.name,
                                                         f"call:{call.sid}:{call_status}")}]
    assert rig.sink.acks == []  # answering is not acknowledging


async def test_forged_key_press_is_refused(rig: Rig) -> None:
    await rig.adapter.send(call_for())
    call = rig.fake.call(TO)
    status, _ = await rig.fake.press(call, "1", signature="Zm9yZ2Vk")
    assert status == 403
    assert rig.sink.acks == []
    [entry] = rig.rejections.entries
    assert entry["entry_point"] == "POST /hooks/twilio/voice/gather"
    assert "does not match" in entry["reason"]


async def test_key_press_without_delivery_is_400(rig: Rig) -> None:
    await rig.adapter.send(call_for())
    call = rig.fake.call(TO)
    status, _ = await rig.fake.press(call, "1",
                                     action=f"{rig.public_url}/hooks/twilio/voice/gather")
    assert status == 400
    assert rig.sink.acks == []
    assert "no delivery id" in rig.rejections.entries[0]["reason"]


async def test_invalid_number_is_permanent(rig: Rig) -> None:
    rig.fake.fail_number(TO, 21211)
    with pytest.raises(PermanentError, match="21211"):
        await rig.adapter.send(call_for())


async def test_lifted_warning_call_asks_nothing(rig: Rig) -> None:
    await rig.adapter.send(call_for(kind="cancel", headline="【解除】夏溪县暴雨红色预警",
                                    text="预警已解除。"))
    assert "<Gather" not in rig.fake.call(TO).form["Twiml"]
