"""The SMS adapter through the real ``twilio`` library against the fake Twilio: sending,
provider errors, and the webhooks Twilio calls back (signed as Twilio signs them)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from warngate_twilio import TwilioSmsAdapter
from warngate_twilio.testing import AdapterRig, FakeTwilio, adapter_rig, free_port, twilio_options

from warngate.adapter import (
    AuthError,
    Outbound,
    PermanentError,
    ProviderEvent,
    TransientError,
    load_adapter,
)
from warngate.settings import AdapterSettings
from warngate.testing import RecordingSink

TO = "+8617000000010"
LINK = "http://yj.test/ack/2a-k7x9q2mz4d"


Rig = AdapterRig[TwilioSmsAdapter]


def warning(delivery_id: int = 7, to: str = TO, **kw: Any) -> Outbound:
    base: dict[str, Any] = {
        "delivery_id": delivery_id, "alert_id": 1, "kind": "alert", "channel": "sms",
        "address": to, "level": "red", "headline": "夏溪县气象台发布暴雨红色预警",
        "text": "预计未来3小时内将出现50毫米以上降水，请立即转移。" * 6, "ack_url": LINK,
        "ack_required": True,
    }
    return Outbound(**{**base, **kw})


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as f:
        yield f


@pytest.fixture
async def rig(fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    async with make_rig(fake, monkeypatch) as r:
        yield r


def make_rig(fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch, *, token: str | None = None,
             **options: Any) -> contextlib.AbstractAsyncContextManager[Rig]:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", token or fake.auth_token)
    settings = AdapterSettings(name="sms", type="twilio-sms", channel="sms",
                               options=twilio_options(fake, **options))
    return adapter_rig(TwilioSmsAdapter, settings, fake)


# -- sending ------------------------------------------------------------------------------

async def test_send_goes_through_the_twilio_library(rig: Rig) -> None:
    message = warning()
    result = await rig.adapter.send(message)
    sent = rig.fake.message(TO)
    assert result.provider_ref == sent.sid and sent.sid.startswith("SM")
    form = sent.form
    assert form["From"] == "+15005550006" and "MessagingServiceSid" not in form
    assert form["StatusCallback"] == rig.url("status", "?d=7")
    assert form["Body"].startswith(f"夏溪县气象台发布暴雨红色预警\n回复1或点链接确认：{LINK}\n")
    # Our segment count agrees with Twilio's (the fake counts on its own).
    assert rig.adapter.compose(message).segments == sent.num_segments == 4  # 213 UCS-2 chars
    assert rig.adapter.counts["segments"] == 4
    path = f"/2010-04-01/Accounts/{rig.fake.account_sid}/Messages.json"
    assert rig.fake.requests[-1].path == path


async def test_body_is_cut_to_max_segments(fake: FakeTwilio,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    async with make_rig(fake, monkeypatch, max_segments=2, prefix="【夏溪应急】") as rig:
        await rig.adapter.send(warning(text="降水" * 400))
        sent = rig.fake.message(TO)
        assert sent.num_segments == 2
        assert sent.form["Body"].startswith("【夏溪应急】") and sent.form["Body"].endswith("…")


async def test_messaging_service_and_api_key(fake: FakeTwilio,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    key = "SK" + "5" * 32
    fake.api_keys[key] = "key-secret"
    monkeypatch.setenv("TWILIO_API_KEY_SECRET", "key-secret")
    async with make_rig(fake, monkeypatch, from_number=None,
                        messaging_service_sid="MG" + "4" * 32, api_key_sid=key) as rig:
        await rig.adapter.send(warning())
        form = rig.fake.message(TO).form
        assert form["MessagingServiceSid"] == "MG" + "4" * 32 and "From" not in form


async def test_cancel_and_no_ack_messages_carry_no_link(rig: Rig) -> None:
    await rig.adapter.send(warning(kind="cancel", headline="【解除】暴雨红色预警",
                                   text="暴雨红色预警已解除。"))
    assert rig.fake.message(TO).form["Body"] == "【解除】暴雨红色预警\n暴雨红色预警已解除。"
    await rig.adapter.send(warning(ack_required=False, ack_url=None, text="注意防范。"))
    assert rig.fake.message(TO).form["Body"] == "夏溪县气象台发布暴雨红色预警\n注意防范。"


async def test_wrong_credentials_are_an_auth_error(fake: FakeTwilio,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async with make_rig(fake, monkeypatch, token="not-the-token") as rig:
        with pytest.raises(AuthError, match="20003"):
            await rig.adapter.send(warning())
    assert fake.counts["messages"] == 0


async def test_429_is_transient_with_retry_after(rig: Rig) -> None:
    rig.fake.fail_next(1, status=429, retry_after=7)
    with pytest.raises(TransientError) as caught:
        await rig.adapter.send(warning())
    assert caught.value.retry_after == 7.0
    await rig.adapter.send(warning())  # the next one goes through
    assert rig.fake.counts["messages"] == 1


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_transient(rig: Rig, status: int) -> None:
    rig.fake.fail_next(1, status=status)
    with pytest.raises(TransientError, match=str(status)) as caught:
        await rig.adapter.send(warning())
    assert caught.value.retry_after is None


async def test_unreachable_api_is_transient(fake: FakeTwilio,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async with make_rig(fake, monkeypatch, api_base_url=f"http://127.0.0.1:{free_port()}") as rig:
        with pytest.raises(TransientError, match="not reachable"):
            await rig.adapter.send(warning())


async def test_runs_on_the_gateways_shared_session_and_leaves_it_open(
        fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", fake.auth_token)
    requests: list[str] = []

    async def seen(_: aiohttp.ClientSession, __: Any, params: aiohttp.TraceRequestStartParams,
                   ) -> None:
        requests.append(params.url.path)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(seen)
    async with aiohttp.ClientSession(trace_configs=[trace]) as shared:
        settings = AdapterSettings(name="sms", type="twilio-sms", channel="sms",
                                   options=twilio_options(fake))
        # As the gateway builds it: shared resources by name, taken by the classes naming them.
        adapter = load_adapter(settings, http_session=shared, public_url="http://gw.test",
                               unrelated="ignored")
        await adapter.start(RecordingSink())
        try:
            await adapter.send(warning())
        finally:
            await adapter.stop()
        assert requests == [f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json"]
        assert not shared.closed  # the gateway's to close, after every adapter stopped
    assert fake.counts["messages"] == 1


@pytest.mark.parametrize(("code", "words"), [(21211, "invalid 'To' number"),
                                             (21614, "not a mobile number"),
                                             (21610, "opted out")])
async def test_bad_numbers_are_permanent(rig: Rig, code: int, words: str) -> None:
    rig.fake.fail_number(TO, code)
    with pytest.raises(PermanentError, match=str(code)) as caught:
        await rig.adapter.send(warning())
    assert words in str(caught.value)


# -- status callbacks ---------------------------------------------------------------------

async def test_status_callbacks_become_receipts_once(rig: Rig) -> None:
    await rig.adapter.send(warning())
    sent = rig.fake.message(TO)
    for status in ("queued", "sent", "delivered", "delivered"):  # Twilio repeats itself
        assert (await rig.fake.message_status(sent, status))[0] == 204
    assert rig.sink.receipts == [
        {"delivery_id": 7, "provider_ref": sent.sid, "status": s, "detail": None,
         "event": ProviderEvent(rig.adapter.name, f"status:{sent.sid}:{s}")}
        for s in ("queued", "sent", "delivered")
    ]
    assert rig.adapter.guard.counts["duplicate"] == 1


async def test_undelivered_carries_the_error_code(rig: Rig) -> None:
    await rig.adapter.send(warning())
    await rig.fake.message_status(rig.fake.message(TO), "undelivered", error_code=30003)
    assert rig.sink.receipts[-1]["status"] == "undelivered"
    assert rig.sink.receipts[-1]["detail"] == "Twilio error 30003"


@pytest.mark.parametrize("signature", [None, "bm90IGEgc2lnbmF0dXJl", "other-url"])
async def test_bad_signature_is_refused_and_recorded(rig: Rig, signature: str | None) -> None:
    await rig.adapter.send(warning())
    sent = rig.fake.message(TO)
    params = {"MessageSid": sent.sid, "MessageStatus": "delivered"}
    if signature == "other-url":  # a valid signature, but for another URL
        signature = rig.fake.sign(rig.url("status", "?d=8"), params)
    status, _ = await rig.fake.post(rig.url("status", "?d=7"), params, signature=signature)
    assert status == 403
    assert rig.sink.receipts == []
    [entry] = rig.rejections.entries
    assert entry["entry_point"] == "POST /hooks/twilio/sms/status"
    assert "X-Twilio-Signature" in entry["reason"]
    assert entry["body"] and sent.sid.encode() in entry["body"]
    assert rig.adapter.guard.counts["rejected_signature"] == 1


async def test_signature_checked_against_public_url_behind_proxy(
    fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = "https://yj.example.cn/warngate"
    async with make_rig(fake, monkeypatch, webhook_base_url=public) as rig:
        await rig.adapter.send(warning())
        sent = fake.message(TO)
        assert sent.status_callback == f"{public}/hooks/twilio/sms/status?d=7"
        params = {"MessageSid": sent.sid, "MessageStatus": "delivered"}
        local = rig.url("status", "?d=7")  # where the proxy forwards it
        # Twilio signed the public URL it called, not the address behind the proxy.
        assert (await fake.post(local, params, signature=fake.sign(local, params)))[0] == 403
        good = fake.sign(sent.status_callback or "", params)
        assert (await fake.post(local, params, signature=good))[0] == 204
        # Twilio has also been known to sign with the default port spelled out.
        with_port = (sent.status_callback or "").replace("example.cn/", "example.cn:443/")
        params["MessageStatus"] = "read"
        assert (await fake.post(local, params, signature=fake.sign(with_port, params)))[0] == 204
        assert [r["status"] for r in rig.sink.receipts] == ["delivered", "read"]


async def test_unusable_signed_callbacks_are_400_and_recorded(rig: Rig) -> None:
    status, _ = await rig.fake.post(rig.url("status", "?d=x1"),
                                    {"MessageSid": "SM1", "MessageStatus": "sent"})
    assert status == 400
    status, _ = await rig.fake.post(rig.url("status", "?d=1"), {"MessageSid": "SM1"})
    assert status == 400
    assert [e["reason"] for e in rig.rejections.entries] == [
        "SMS status callback: d='x1' is not a delivery id",
        "SMS status callback: no MessageSid or MessageStatus",
    ]
    assert rig.sink.receipts == []


async def test_callback_without_delivery_id_reports_the_sid(rig: Rig) -> None:
    # A callback configured on the Messaging Service rather than per message.
    status, _ = await rig.fake.post(rig.url("status"),
                                    {"MessageSid": "SM" + "9" * 32, "MessageStatus": "failed",
                                     "ErrorCode": "30006", "ErrorMessage": "Landline"})
    assert status == 204
    assert rig.sink.receipts == [{"delivery_id": None, "provider_ref": "SM" + "9" * 32,
                                  "status": "failed", "detail": "Twilio error 30006: Landline",
                                  "event": ProviderEvent(rig.adapter.name,
                                                         f"status:SM{'9' * 32}:failed")}]


# -- replies ------------------------------------------------------------------------------

@pytest.mark.parametrize("reply", ["1", "收到", "确认", "ok", "OK", "好", " 收到！", "１"])
async def test_reply_acknowledges(rig: Rig, reply: str) -> None:
    status, text = await rig.fake.inbound_sms(rig.url("inbound"), from_=TO, body=reply)
    assert status == 200 and "<Response" in text and "<Message" not in text
    [ack] = rig.sink.acks
    assert ack["phone"] == TO and ack["via"] == "sms_reply" and ack["delivery_id"] is None


async def test_repeated_reply_acknowledges_once(rig: Rig) -> None:
    sid = "SM" + "a" * 32
    for _ in range(3):
        await rig.fake.inbound_sms(rig.url("inbound"), from_=TO, body="收到", sid=sid)
    assert len(rig.sink.acks) == 1


async def test_other_reply_is_a_field_report_not_an_acknowledgement(rig: Rig) -> None:
    status, _ = await rig.fake.inbound_sms(rig.url("inbound"), from_=TO,
                                           body="家里进水了，需要救援")
    assert status == 200
    assert rig.sink.acks == [] and rig.rejections.entries == []
    [report] = rig.sink.reports
    assert (report["phone"], report["text"]) == (TO, "家里进水了，需要救援")


async def test_configured_words_and_confirmation(fake: FakeTwilio,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async with make_rig(fake, monkeypatch, ack_words=["明白"], ack_reply="已收到您的确认。") as rig:
        _, text = await fake.inbound_sms(rig.url("inbound"), from_=TO, body="1")
        assert rig.sink.acks == [] and "<Message" not in text
        _, text = await fake.inbound_sms(rig.url("inbound"), from_=TO, body="明白。")
        assert len(rig.sink.acks) == 1
        assert "<Message>已收到您的确认。</Message>" in text


async def test_forged_reply_is_refused(rig: Rig) -> None:
    status, _ = await rig.fake.inbound_sms(rig.url("inbound"), from_=TO, body="1",
                                           signature=None)
    assert status == 403
    assert rig.sink.acks == []
    assert len(rig.rejections.entries) == 1
