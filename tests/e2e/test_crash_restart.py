"""SIGKILL the service in the middle of a fan-out, start it again: no delivery is lost.

The real ``warngate serve`` runs as a child process on a YAML configuration, exactly as an
operator runs it; the test only talks HTTP to it and reads the database afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from sqlalchemy import func, select

from tests.smallcounty import write_small_county
from warngate.settings import hash_token
from warngate.sim import SimOptions
from warngate.store import Store
from warngate.store.schema import alerts, contacts, deliveries, receipts

TOKEN = "crash-test-token"
# What the killed process had handed to the (simulated) provider stays "sent": its receipt
# died with the process, as a real provider's would not. Everything else must be delivered.
GONE_OUT = {"sent", "delivered"}
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, db_url: str, port: int) -> Path:
    policy = {"levels": {level: {"roles": {
        "grid_worker": {"channels": ["sms"]}, "household": {"channels": ["sms"]}}}
        for level in ("blue", "yellow", "orange", "red")}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    config = {
        "database": {"url": db_url},
        "http": {"host": "127.0.0.1", "port": port,
                 "public_url": f"http://127.0.0.1:{port}"},
        "auth": {"four_eyes": False, "tokens": [
            {"name": "ops", "role": "admin", "token_sha256": hash_token(TOKEN)}]},
        "policy_file": "policy.yaml",
        # Slow enough that the kill lands mid-fan-out; a short lease so that what the
        # dead process had claimed comes back quickly.
        "adapters": [{"name": "sms", "type": "sim-sms", "channel": "sms", "concurrency": 20,
                      "rate_per_second": 400, "options": {"delivery_delay": [0.0, 0.2]}}],
        "dispatch": {"lease": 2, "batch_size": 100, "idle_poll": 0.05},
    }
    path = tmp_path / "warngate.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


class Service:
    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.base = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.log = config.parent / "service.log"

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "warngate", "serve", "--config", str(self.config),
                stdout=log, stderr=log, cwd=self.config.parent)
        async with asyncio.timeout(60):
            while True:
                if self.proc.returncode is not None:
                    pytest.fail(f"service exited: {self.log.read_text(errors='replace')}")
                try:
                    async with http.get(f"{self.base}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    def note(self, what: str) -> None:
        """Mark the test's own steps in the service's log, for whoever reads a failure."""
        with self.log.open("a") as log:
            log.write(f"=== test {time.strftime('%H:%M:%S')}: {what}\n")

    async def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(20):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'warngate.db'}"
    else:
        from tests.conftest import pg_database
        async with pg_database() as url:
            yield url


async def counts(store: Store, alert_id: int) -> dict[str, int]:
    async with store.read() as conn:
        rows = (await conn.execute(
            select(deliveries.c.state, func.count()).where(deliveries.c.alert_id == alert_id)
            .group_by(deliveries.c.state))).all()
    return {state: n for state, n in rows}


async def wait_for(store: Store, alert_id: int, check: Callable[[dict[str, int]], bool],
                   service: Service, *, within: float) -> None:
    """Poll the delivery states until ``check`` holds; on a hang, say where it stood."""
    seen: dict[str, int] = {}
    try:
        async with asyncio.timeout(within):
            while not check(seen := await counts(store, alert_id)):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        tail = service.log.read_text(errors="replace")[-3000:]
        pytest.fail(f"deliveries stuck at {seen}; service log:\n{tail}")


async def test_sigkill_mid_fanout_loses_nothing(tmp_path: Path, db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        # 2 townships × 10 villages × 3 grids: 60 grid workers, 60 × 25 households.
        await write_small_county(store, townships=2, villages=10, grids=3, households=25)
        expected = 60 + 60 * 25
        port = free_port()
        service = Service(write_config(tmp_path, db_url, port), port)
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            await service.start(http)
            try:
                async with http.post(f"{service.base}/api/v1/alerts", json={
                    "level": "red", "event": "暴雨", "headline": "暴雨红色预警",
                    "areas": ["339901001", "339901002"]}) as resp:
                    assert resp.status == 201, await resp.text()
                    alert_id = (await resp.json())["alert_id"]
                async with http.post(
                        f"{service.base}/api/v1/alerts/{alert_id}/approve") as resp:
                    assert resp.status == 200, await resp.text()

                # Kill once some, but far from all, messages have gone out.
                await wait_for(store, alert_id, lambda c: c.get("delivered", 0) >= 100,
                               service, within=60)
                await service.kill()
                before = await counts(store, alert_id)
                assert before.get("delivered", 0) < expected, before

                await service.start(http)
                await wait_for(
                    store, alert_id,
                    lambda c: sum(c.values()) == expected and set(c) <= GONE_OUT,
                    service, within=90)
                async with http.get(
                        f"{service.base}/api/v1/alerts/{alert_id}/receipts") as resp:
                    board: dict[str, Any] = await resp.json()
            finally:
                await service.stop()
        sms = board["totals"]["sms"]
        assert set(sms) <= GONE_OUT and sum(sms.values()) == expected, sms
        assert sms.get("sent", 0) <= before.get("sent", 0) + before.get("sending", 0), before
        async with store.read() as conn:
            # One delivery per person: the restart re-sent what was in flight, it did not
            # plan anyone twice.
            people = (await conn.execute(
                select(func.count(func.distinct(deliveries.c.contact_id)))
                .where(deliveries.c.alert_id == alert_id))).scalar_one()
            state = (await conn.execute(
                select(alerts.c.state).where(alerts.c.id == alert_id))).scalar_one()
        assert people == expected
        assert state == "active", state  # planning finished after the restart
    finally:
        await store.close()


# -- six kills during a large fan-out with failures, escalation and a cancel ---------------

# Two townships × 25 villages × 4 grids: 200 grid workers and 29,800 households; each of the
# two alerts covers one township, so the fan-out is 30,000 first messages.
BIG = {"townships": 2, "villages": 25, "grids": 4, "households": 149}
PER_ALERT = 25 * 4 * (1 + 149)
KILLS = 6
CANCEL_AFTER_KILL = 3
#: Failing numbers (an "undelivered" receipt), numbers the provider refuses at send time
#: (``PermanentError``), people who do not answer: each a deterministic share of addresses.
SMS_SIM = SimOptions(seed=8, delivery_delay=(0.0, 0.2), unreachable_rate=0.05,
                     permanent_rate=0.02, ack_probability=0.6, ack_delay=(0.0, 0.3))
VOICE_SIM = SimOptions(seed=9, delivery_delay=(0.0, 0.3), unreachable_rate=0.1,
                       permanent_rate=0.03, ack_probability=0.5, ack_delay=(0.0, 0.3))
SIMS = {"sms": SMS_SIM, "voice": VOICE_SIM}
LIVE_STATES = ("planned", "retry", "sending")
#: Handed to the provider, with or without its verdict yet.
ENDED = ("sent", "delivered", "acknowledged", "failed")
FAILED_RECEIPTS = {"undelivered", "no_answer", "failed"}
REACHED_RECEIPTS = {"delivered", "answered"}
#: A bounded wait for the end of the fan-out; a passing run needs a fraction of it.
QUIET_CEILING = 120.0


def write_fanout_config(tmp_path: Path, db_url: str, port: int) -> Path:
    # Grid workers must answer: no answer within 4 s calls them, 4 s later their village
    # head is told on their behalf. Failed numbers escalate at once.
    grid = {"channels": ["sms"], "ack": {"required": True, "within": 4},
            "escalation": [{"after": 4, "channel": "voice", "to": "self"},
                           {"after": 8, "channel": "sms", "to": "supervisor"}]}
    policy = {"levels": {level: {"roles": {"grid_worker": grid,
                                           "household": {"channels": ["sms"]}}}
                         for level in ("blue", "yellow", "orange", "red")}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    config = {
        "database": {"url": db_url},
        "http": {"host": "127.0.0.1", "port": port,
                 "public_url": f"http://127.0.0.1:{port}"},
        "auth": {"four_eyes": False, "tokens": [
            {"name": "ops", "role": "admin", "token_sha256": hash_token(TOKEN)}]},
        "policy_file": "policy.yaml",
        "adapters": [
            {"name": "sms", "type": "sim-sms", "channel": "sms", "concurrency": 50,
             "rate_per_second": 3000, "options": SMS_SIM.model_dump(mode="json")},
            {"name": "voice", "type": "sim-voice", "channel": "voice", "concurrency": 20,
             "rate_per_second": 500, "options": VOICE_SIM.model_dump(mode="json")},
        ],
        # The lease outlives a restart (seconds on a loaded machine), so rows the killed
        # process held are still its claims when the cancel lands after the third restart.
        "dispatch": {"lease": 10, "batch_size": 500, "idle_poll": 0.05},
        "escalation": {"sweep_every": 1},
    }
    path = tmp_path / "warngate.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


async def all_counts(store: Store) -> dict[str, int]:
    async with store.read() as conn:
        rows = (await conn.execute(
            select(deliveries.c.state, func.count()).group_by(deliveries.c.state))).all()
    return {state: n for state, n in rows}


async def ids_in(store: Store, state: str, alert_id: int | None = None
                 ) -> dict[int, int]:
    """Delivery id → attempts, for the rows in ``state`` (of one alert if given)."""
    q = select(deliveries.c.id, deliveries.c.attempts).where(deliveries.c.state == state)
    if alert_id is not None:
        q = q.where(deliveries.c.alert_id == alert_id)
    async with store.read() as conn:
        return {i: n for i, n in (await conn.execute(q)).all()}


async def quiet(store: Store, *, within: float) -> dict[str, int]:
    """Wait until nothing is live, no escalation is pending and nothing moves for 2 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: dict[str, int] = {}
    since = loop.time()
    while loop.time() < deadline:
        now = await all_counts(store)
        async with store.read() as conn:
            pending = (await conn.execute(
                select(func.count()).where(deliveries.c.escalate_at.is_not(None),
                                           deliveries.c.acked_at.is_(None)))).scalar_one()
        if now != last or pending or any(now.get(s) for s in LIVE_STATES):
            last, since = now, loop.time()
        elif loop.time() - since >= 2.0:
            return now
        await asyncio.sleep(0.25)
    return last


def log_excerpt(service: Service) -> str:
    text = service.log.read_text(errors="replace")
    lines = text.splitlines()
    notable = [ln for ln in lines if any(w in ln for w in (
        "ERROR", "CRITICAL", "could not record", "Error:", "claimed by a process"))]
    return (f"{len(notable)} notable lines of {len(lines)}; first ones:\n"
            + "\n".join(notable[:15]) + "\n... last lines:\n" + "\n".join(lines[-25:]))


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None,
               *, status: int = 200) -> dict[str, Any]:
    async with http.post(url, json=body) as resp:
        assert resp.status == status, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


@pytest.mark.timeout(300)
async def test_six_sigkills_in_a_failing_fanout_with_cancel(tmp_path: Path, db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        await write_small_county(store, **BIG)
        port = free_port()
        service = Service(write_fanout_config(tmp_path, db_url, port), port)
        ever_sent: set[int] = set()  # rows whose receipt may have died with a process
        held_at_cancel: dict[int, int] = {}
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            await service.start(http)
            try:
                alert_ids = []
                for township in ("339901001", "339901002"):
                    created = await post(http, f"{service.base}/api/v1/alerts", {
                        "level": "red", "event": "暴雨", "headline": "暴雨红色预警",
                        "areas": [township]}, status=201)
                    alert_ids.append(created["alert_id"])
                    await post(http, f"{service.base}/api/v1/alerts/"
                                     f"{created['alert_id']}/approve")
                kept, cancelled = alert_ids

                finished = 0
                for kill in range(1, KILLS + 1):
                    # Spread the kills over what is left to send (the cancel shrinks it):
                    # each after another share of it has been handed to the provider.
                    seen = await all_counts(store)
                    # (Before the first kill, planning may still be adding households.)
                    total = max(sum(seen.values()), 2 * PER_ALERT)
                    left = total - seen.get("cancelled", 0) - finished
                    target = finished + left // (KILLS + 2 - kill)
                    try:
                        async with asyncio.timeout(60):
                            while (finished := sum(seen.get(s, 0) for s in ENDED)) < target:
                                await asyncio.sleep(0.05)
                                seen = await all_counts(store)
                    except TimeoutError:
                        pytest.fail(f"kill {kill}: fan-out stalled at {seen} before "
                                    f"{target} were sent\n{log_excerpt(service)}")
                    await service.kill()
                    ever_sent |= set(await ids_in(store, "sent"))
                    held = await ids_in(store, "sending", cancelled)
                    service.note(f"SIGKILL {kill} at {await all_counts(store)}")
                    await service.start(http)
                    if kill == CANCEL_AFTER_KILL:
                        async with store.read() as conn:
                            state = (await conn.execute(select(alerts.c.state).where(
                                alerts.c.id == cancelled))).scalar_one()
                        assert state == "active", f"planning unfinished at the cancel: {state}"
                        await post(http, f"{service.base}/api/v1/alerts/{cancelled}/cancel",
                                   {"reason": "演练: 重启后撤销"})
                        # Still the dead process's claims (same attempt), now of a
                        # cancelled alert: the lease brings them back, and they must end
                        # cancelled rather than be sent.
                        still = await ids_in(store, "sending", cancelled)
                        held_at_cancel = {i: n for i, n in held.items() if still.get(i) == n}
                        assert held_at_cancel, (
                            "no row of the cancelled alert was still claimed by the killed "
                            "process when the cancel landed: the restart outlasted the lease")
                final = await quiet(store, within=QUIET_CEILING)
                service.note(f"quiet at {final}")
            finally:
                await service.stop()
                service.note("stopped")
        await check_outcome(store, kept=kept, cancelled=cancelled, ever_sent=ever_sent,
                            held_at_cancel=held_at_cancel, final=final, service=service)
    finally:
        await store.close()


async def check_outcome(store: Store, *, kept: int, cancelled: int, ever_sent: set[int],
                        held_at_cancel: dict[int, int], final: dict[str, int],
                        service: Service) -> None:
    async with store.read() as conn:
        rows = (await conn.execute(select(
            deliveries.c.id, deliveries.c.alert_id, deliveries.c.kind, deliveries.c.contact_id,
            deliveries.c.on_behalf_of, deliveries.c.speaker_id, deliveries.c.channel,
            deliveries.c.step, deliveries.c.state, deliveries.c.last_error,
            deliveries.c.acked_at, deliveries.c.attempts, deliveries.c.township_code,
            deliveries.c.created_at))).all()
        got: dict[int, set[str]] = {}
        for delivery_id, status in (await conn.execute(
                select(receipts.c.delivery_id, receipts.c.status))).all():
            got.setdefault(delivery_id, set()).add(status)
        people = {c.id: c for c in (await conn.execute(select(
            contacts.c.id, contacts.c.phone, contacts.c.role, contacts.c.township_code,
            contacts.c.supervisor_id))).all()}
        alert_rows = {a.id: a for a in (await conn.execute(select(
            alerts.c.id, alerts.c.state, alerts.c.planned_count))).all()}

    # Every delivery in a final state.
    live = Counter((r.alert_id, r.state) for r in rows if r.state in LIVE_STATES)
    assert not live, (
        f"deliveries left live (alert, state): {dict(live)}; all states: {final}; highest "
        f"attempt among them: {max(r.attempts for r in rows if r.state in LIVE_STATES)}\n"
        f"{log_excerpt(service)}")

    # No recipient with two rows for one step. A duty officer's alarms about silent people
    # come one per township and sweep (escalation.alarm_silent): those are keyed by both.
    keys = Counter((r.alert_id, r.kind, r.contact_id, r.on_behalf_of, r.speaker_id, r.channel,
                    r.step, *((r.township_code, r.created_at) if r.kind == "silent" else ()))
                   for r in rows)
    twice = {k: n for k, n in keys.items() if n > 1}
    assert not twice, f"{len(twice)} (alert, kind, person, for, speaker, channel, step) " \
                      f"twice, e.g. {list(twice.items())[:5]}"

    # Nothing lost: each alert's first step reached everyone in its township, planned once.
    townships = {kept: "339901001", cancelled: "339901002"}
    for alert_id, township in townships.items():
        expected = {c.id for c in people.values() if c.township_code == township
                    and c.role in ("grid_worker", "household")}
        first = [r.contact_id for r in rows
                 if r.alert_id == alert_id and r.kind == "alert" and r.step == 0]
        assert len(first) == len(expected) == PER_ALERT, (alert_id, len(first))
        assert set(first) == expected
        assert alert_rows[alert_id].planned_count == PER_ALERT
    assert alert_rows[kept].state == "active"
    assert alert_rows[cancelled].state == "cancelled"

    # Every receipt recorded: a row is only left "sent" if a killed process had sent it
    # (its receipt died with the process); each provider verdict is in the database.
    def where(r: Any) -> str:
        return (f"delivery {r.id} (alert {r.alert_id}, {r.kind}, {r.channel}, step {r.step}, "
                f"attempts {r.attempts}): {r.state}, receipts {got.get(r.id)}, "
                f"last_error {r.last_error!r}")

    for r in rows:
        assert r.state != "sent" or r.id in ever_sent, where(r)
        if r.state == "cancelled":
            # Only what had not gone out yet, and only warnings of the cancelled alert.
            assert r.alert_id == cancelled and r.kind == "alert", where(r)
            continue
        sim = SIMS[r.channel]
        phone = people[r.contact_id].phone
        if sim.refuses(phone):
            assert r.state == "failed" and r.last_error, where(r)
        elif not sim.reaches(phone):
            assert r.state in ("failed", "sent"), where(r)
            assert r.state == "sent" or got.get(r.id, set()) & FAILED_RECEIPTS, where(r)
        else:
            assert r.state in ("delivered", "acknowledged", "sent"), where(r)
            assert r.state == "sent" or got.get(r.id, set()) & REACHED_RECEIPTS, where(r)

    # The cancel: the dead process's claims it found came back and ended cancelled; its
    # lifted notices went to people already reached, once each, and were not cancelled.
    held = [r for r in rows if r.id in held_at_cancel]
    assert len(held) == len(held_at_cancel)
    for r in held:
        assert r.state == "cancelled", where(r)
    notices = [r for r in rows if r.kind == "cancel"]
    assert notices and all(r.alert_id == cancelled for r in notices)
    assert sum(r.state == "cancelled" for r in rows if r.alert_id == cancelled) > 0

    # Escalation survived the kills: every grid worker of the kept alert who never answered
    # was called (step 1), then their village head told (step 2).
    answered = {p for r in rows if r.alert_id == kept and r.acked_at is not None
                for p in (r.on_behalf_of or r.contact_id,)}
    steps = {(r.on_behalf_of or r.contact_id, r.step) for r in rows if r.alert_id == kept}
    silent = [c for c in people.values() if c.role == "grid_worker"
              and c.township_code == townships[kept] and c.id not in answered]
    assert silent, "nobody left unanswered: the escalation path was not exercised"
    for c in silent:
        assert (c.id, 1) in steps and (c.id, 2) in steps, f"grid worker {c.id} not escalated"
    for r in rows:
        if r.step == 2:
            assert r.contact_id == people[r.on_behalf_of].supervisor_id, r

    # The run met what it set out to: refusals, failing numbers and escalations all happened.
    failed = [r for r in rows if r.state == "failed"]
    refused = sum(1 for r in failed if r.last_error and not got.get(r.id))
    undelivered = sum(1 for r in failed if got.get(r.id, set()) & FAILED_RECEIPTS)
    assert refused and undelivered, (refused, undelivered)
    print(f"crash test: {len(rows)} deliveries {final}; {refused} refused, {undelivered} "
          f"undelivered, {len(silent)} grid workers escalated, {len(held_at_cancel)} dead "
          f"claims of the cancelled alert, {sum(r.attempts > 1 for r in rows)} sent again")
