"""The whole gateway (SQLite, the web app, dispatch, receipts, escalation) sending through the
Twilio adapters to the fake Twilio, which calls back as Twilio would."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select
from warngate_twilio.testing import FakeTwilio, free_port, serving, twilio_options

from tests.gateway_run import GatewayRun
from tests.smallcounty import write_small_county
from warngate.alerts import record_rejection
from warngate.policy import Policy
from warngate.service import load_adapters
from warngate.settings import (
    AdapterSettings,
    ApiToken,
    AuthSettings,
    DispatchSettings,
    EscalationSettings,
    HttpSettings,
    RetrySettings,
    Settings,
    hash_token,
)
from warngate.store import Store
from warngate.store.schema import (
    acknowledgements,
    contacts,
    deliveries,
    receipts,
    rejected_inputs,
)
from warngate.web.app import GATEWAY, build_app

T1 = "339901001"
RETRY = RetrySettings(max_attempts=20, base_delay=0.2, max_delay=1.0)


def red_policy(escalate_after: float = 4.0) -> Policy:
    responsible = {
        "channels": ["sms"],
        "ack": {"required": True, "within": 60},
        "escalation": [{"after": escalate_after, "channel": "voice"}],
    }
    return Policy.model_validate({
        "levels": {
            "blue": {"roles": {"township_duty": {"channels": ["sms"]},
                               "grid_worker": {"channels": ["sms"]}}},
            "yellow": {"roles": {"grid_worker": {"channels": ["sms"]}}},
            "orange": {"roles": {"grid_worker": {"channels": ["sms"]}}},
            "red": {"roles": {"township_duty": responsible, "village_head": responsible,
                              "grid_worker": responsible, "household": {"channels": ["sms"]}}},
        },
        "drills": {"roles": ["township_duty"]},
    })


@dataclass
class Running(GatewayRun):
    fake: FakeTwilio
    public_url: str
    phones: dict[str, str]  # external id → phone

    def hook(self, leaf: str) -> str:
        return f"{self.public_url}/hooks/twilio/{leaf}"


@contextlib.asynccontextmanager
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, policy: Policy,
                  fake: FakeTwilio, sms_rate: float = 200) -> AsyncIterator[Running]:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", fake.auth_token)
    url = f"sqlite+aiosqlite:///{tmp_path / 'warngate.db'}"
    store = await Store.open(url)
    try:
        await write_small_county(store, townships=1, villages=1, grids=2, households=1)
        async with store.read() as conn:
            phones = dict((await conn.execute(select(contacts.c.external_id,
                                                     contacts.c.phone))).all())
    finally:
        await store.close()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = Settings(
        database={"url": url},  # type: ignore[arg-type]
        http=HttpSettings(public_url=public),
        auth=AuthSettings(four_eyes=False, tokens=(
            ApiToken(name="admin", role="admin", token_sha256=hash_token("tok-admin")),)),
        adapters=(
            AdapterSettings(name="sms", type="twilio-sms", channel="sms", concurrency=20,
                            rate_per_second=sms_rate, retry=RETRY,
                            options=twilio_options(fake)),
            AdapterSettings(name="voice", type="twilio-voice", channel="voice", concurrency=5,
                            rate_per_second=20, retry=RETRY, options=twilio_options(fake)),
        ),
        dispatch=DispatchSettings(idle_poll=0.02),
        escalation=EscalationSettings(sweep_every=0.1),
    )
    holder: dict[str, Any] = {}

    # What the service does for adapters that keep refused webhooks: record them in the store.
    async def keep_rejection(**kw: Any) -> int:
        return await record_rejection(holder["app"][GATEWAY].store, **kw)

    adapters = load_adapters(settings, policy, public_url=public,
                             record_rejection=keep_rejection)
    app = build_app(settings, policy, adapters)
    holder["app"] = app
    async with serving(app, port):
        yield Running(app[GATEWAY], fake, public, phones)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(autopilot=True) as f:
        yield f


def by_person() -> Any:
    return (select(contacts.c.external_id, deliveries.c.channel, deliveries.c.step,
                   deliveries.c.state, deliveries.c.attempts, deliveries.c.last_error,
                   deliveries.c.id, deliveries.c.provider_ref)
            .join(contacts, contacts.c.id == deliveries.c.contact_id)
            .order_by(deliveries.c.id))


def settled(rows: list[Any]) -> bool:
    return bool(rows) and all(r.state not in ("planned", "retry", "sending") for r in rows)


# -- the whole path ---------------------------------------------------------------------------

async def test_red_warning_by_sms_replies_and_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeTwilio
) -> None:
    # One village, two grids: duty, village head, 2 grid workers, 2 households.
    async with running(tmp_path, monkeypatch, policy=red_policy(), fake=fake) as run:
        gw1, gw2 = "gw-339901001001001", "gw-339901001001002"
        head, duty = "head-339901001001", "duty-339901001"
        fake.call_outcome.update({run.phones[head]: "press1", run.phones[gw2]: "answer",
                                  run.phones[duty]: "no-answer"})
        alert_id = await run.warn("red")
        await run.until(by_person(), lambda rows: len(rows) == 6 and all(
            r.state == "delivered" for r in rows))

        # Grid worker 1 answers the SMS (Twilio forwards the reply; signed).
        status, _ = await fake.inbound_sms(run.hook("sms/inbound"), from_=run.phones[gw1],
                                           body="收到")
        assert status == 200

        # Nobody else does: after the step's delay, calls; their outcomes come back.
        rows = await run.until(by_person(), lambda rows: settled(rows) and sum(
            1 for r in rows if r.channel == "voice" and r.state != "planned") == 3)
        await fake.settle()
        rows = await run.until(by_person(), lambda rows: settled(rows) and {
            (r.external_id, r.state) for r in rows if r.channel == "voice"} == {
            (head, "acknowledged"), (gw2, "delivered"), (duty, "failed")})

        got = {(r.external_id, r.channel): r.state for r in rows}
        assert got[(gw1, "sms")] == "acknowledged"
        assert (gw1, "voice") not in got  # acknowledged in time: never called
        assert got[(head, "sms")] == "delivered"  # the call confirmed it, not the SMS
        assert got[(duty, "voice")] == "failed"
        assert all(r.state == "delivered" for r in rows if r.external_id.startswith("hh-"))
        # Every call went to the right person with the warning read in Mandarin.
        for who in (head, gw2, duty):
            assert 'language="cmn-CN"' in fake.call(run.phones[who]).form["Twiml"]

        acks = {(r.via, r.contact_id) for r in await run.rows(select(acknowledgements))}
        ids = dict(await run.rows(select(contacts.c.external_id, contacts.c.id)))
        assert acks == {("sms_reply", ids[gw1]), ("dtmf", ids[head])}
        statuses = {r.status for r in await run.rows(select(receipts.c.status))}
        assert {"sent", "delivered", "answered", "no_answer"} <= statuses

        # The receipts API shows it all.
        async with aiohttp.ClientSession() as http, http.get(
            f"{run.public_url}/api/v1/alerts/{alert_id}/receipts",
            headers={"Authorization": "Bearer tok-admin"},
        ) as resp:
            board = await resp.json()
        assert resp.status == 200
        assert board["totals"]["sms"] == {"acknowledged": 1, "delivered": 5}
        assert board["totals"]["voice"] == {"acknowledged": 1, "delivered": 1, "failed": 1}


# -- provider trouble -------------------------------------------------------------------------

async def test_provider_down_then_back_delivers_everything_without_hot_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeTwilio
) -> None:
    async with running(tmp_path, monkeypatch, policy=red_policy(), fake=fake) as run:
        fake.down(500)
        await run.warn("blue")  # duty + 2 grid workers by SMS
        # Down through four attempts each (the fourth answered too).
        await run.until(by_person(), lambda rows: len(rows) == 3 and all(
            r.attempts >= 4 and r.state == "retry" for r in rows))
        refused = fake.counts["refused"]
        fake.up()
        rows = await run.until(by_person(), lambda rows: all(
            r.state == "delivered" for r in rows))
    assert len(rows) == 3 and fake.counts["messages"] == 3  # nothing lost, nothing twice
    assert refused >= 12
    for r in rows:
        phone = run.phones[r.external_id]
        times = [q.at for q in fake.requests if q.form.get("To") == phone]
        assert len(times) == r.attempts <= 10
        # Each retry waits at least half its backoff (jitter), doubling up to max_delay.
        for k, gap in enumerate(b - a for a, b in pairwise(times)):
            floor = min(RETRY.max_delay, RETRY.base_delay * 2**k) / 2
            assert gap >= floor * 0.95, (k, gap, times)


async def test_429_retry_after_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeTwilio
) -> None:
    async with running(tmp_path, monkeypatch, policy=red_policy(), fake=fake) as run:
        fake.fail_next(3, status=429, retry_after=2)
        await run.warn("blue")
        rows = await run.until(by_person(), lambda rows: len(rows) == 3 and all(
            r.state == "delivered" for r in rows))
    for r in rows:
        times = [q.at for q in fake.requests if q.form.get("To") == run.phones[r.external_id]]
        assert [q.answered for q in fake.requests
                if q.form.get("To") == run.phones[r.external_id]] == [429, 201]
        assert times[1] - times[0] >= 1.95  # Retry-After: 2, well above the 0.2 s backoff
        assert r.attempts == 2


async def test_invalid_and_opted_out_numbers_fail_permanently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeTwilio
) -> None:
    async with running(tmp_path, monkeypatch, policy=red_policy(), fake=fake) as run:
        bad, out = "gw-339901001001001", "gw-339901001001002"
        fake.fail_number(run.phones[bad], 21211)
        fake.fail_number(run.phones[out], 21610)
        await run.warn("blue")
        rows = await run.until(by_person(), lambda rows: len(rows) == 3 and settled(rows) and any(
            r.state == "delivered" for r in rows))
    got = {r.external_id: r for r in rows}
    assert got[bad].state == "failed" and "21211" in got[bad].last_error
    assert got[out].state == "failed" and "opted out" in got[out].last_error
    assert got[bad].attempts == got[out].attempts == 1  # never retried
    assert got["duty-339901001"].state == "delivered"


# -- webhooks at the gateway ------------------------------------------------------------------

async def test_forged_duplicated_and_unknown_callbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeTwilio() as fake, running(tmp_path, monkeypatch, policy=red_policy(60),
                                             fake=fake) as run:
        await run.warn("blue")
        rows = await run.until(by_person(), lambda rows: len(rows) == 3 and all(
            r.state == "sent" for r in rows))
        first = rows[0]
        msg = fake.resources[first.provider_ref]

        # Forged: 403, recorded, no effect.
        status, _ = await fake.message_status(msg, "delivered", signature="Zm9yZ2Vk")
        assert status == 403
        # Twilio's retries of one callback: one receipt row.
        for _ in range(3):
            assert (await fake.message_status(msg, "delivered"))[0] == 204
        # Signed, but naming a delivery that does not exist: kept as rejected by the sink.
        status, _ = await fake.post(run.hook("sms/status?d=999999"),
                                    {"MessageSid": "SM" + "e" * 32, "MessageStatus": "delivered"})
        assert status == 204
        status, _ = await fake.post(run.hook("voice/gather?d=999998&n=1"),
                                    {"CallSid": "CA" + "e" * 32, "Digits": "1"})
        assert status == 200

        await run.until(select(deliveries.c.state).where(deliveries.c.id == first.id),
                        lambda r: r[0].state == "delivered")
        rejected = await run.until(
            select(rejected_inputs.c.entry_point, rejected_inputs.c.source,
                   rejected_inputs.c.reason).order_by(rejected_inputs.c.id),
            lambda r: len(r) == 3)
        n_receipts = await run.rows(select(func.count()).select_from(receipts).where(
            receipts.c.delivery_id == first.id, receipts.c.status == "delivered"))
        n_acks = await run.rows(select(func.count()).select_from(acknowledgements))

    assert n_receipts[0][0] == 1
    assert n_acks[0][0] == 0
    forged, unknown_receipt, unknown_ack = rejected
    assert forged.entry_point == "POST /hooks/twilio/sms/status"
    assert forged.source == "twilio:sms" and "X-Twilio-Signature" in forged.reason
    assert "receipt names no delivery we know" in unknown_receipt.reason
    assert "acknowledgement names no delivery we know" in unknown_ack.reason
