"""The gateway's lifecycle: a failed start unwinds exactly what started, a dying core task
stops the service with the reason logged, and shutdown is bounded."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from sqlalchemy import select

from tests.e2e.test_crash_restart import free_port
from tests.gateway_run import rows
from warngate.adapter import Outbound, ReceiptSink, SendResult
from warngate.cli import serve
from warngate.policy import Policy
from warngate.service import Gateway
from warngate.settings import AdapterSettings, AuthSettings, Settings
from warngate.store import Store
from warngate.store.schema import rejected_inputs

POLICY = Policy.model_validate({"levels": {
    level: {"roles": {"household": {"channels": ["sms"]}}}
    for level in ("blue", "yellow", "orange", "red")}})


def settings(store: Store) -> Settings:
    return Settings(
        database={"url": store.engine.url.render_as_string(hide_password=False)},  # type: ignore[arg-type]
        auth=AuthSettings(four_eyes=False),
        adapters=(
            AdapterSettings(name="first", type="test", channel="sms"),
            AdapterSettings(name="second", type="test", channel="voice"),
        ),
        ack_key=SecretStr("lifecycle-test-key-lifecycle-test-key"),
    )


class LoopingAdapter:
    """An adapter with a background loop of its own, as a connection-keeping adapter has."""

    def __init__(self, name: str, channel: str) -> None:
        self.name = name
        self.channel = channel
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        self.receipts: ReceiptSink | None = None

    async def start(self, receipts: ReceiptSink) -> None:
        self.receipts = receipts
        self.task = asyncio.create_task(self._keepalive(), name=f"adapter-{self.name}-loop")

    async def _keepalive(self) -> None:
        await asyncio.Event().wait()  # runs until cancelled, like a connection's reader

    async def send(self, message: Outbound) -> SendResult:
        return SendResult(provider_ref=f"{self.name}-{message.delivery_id}")

    async def stop(self) -> None:
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])

    def routes(self) -> list[web.RouteDef]:
        return []


class FailingToStart(LoopingAdapter):
    async def start(self, receipts: ReceiptSink) -> None:
        raise ConnectionRefusedError("broker refused the connection")


class HangingStop(LoopingAdapter):
    """Reports one last receipt while stopping, then hangs (a dead broker's disconnect)."""

    def __init__(self, name: str, channel: str) -> None:
        super().__init__(name, channel)
        self.release = asyncio.Event()

    async def stop(self) -> None:
        await super().stop()
        assert self.receipts is not None
        self.receipts.receipt(delivery_id=987654321, status="delivered", detail="last words")
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue  # deaf to cancellation, as a stuck library call can be


def alive(name: str) -> bool:
    return any(t.get_name() == name and not t.done() for t in asyncio.all_tasks())


async def test_a_failed_start_stops_what_had_started(store: Store) -> None:
    first = LoopingAdapter("first", "sms")
    second = FailingToStart("second", "voice")
    gateway = Gateway(settings(store), POLICY, store, [first, second])
    with pytest.raises(ConnectionRefusedError):
        async with gateway:
            pytest.fail("the gateway must not start without its second adapter")
    assert first.stopped
    assert first.task is not None and first.task.done()
    assert not alive("adapter-first-loop")
    assert gateway.stopped.is_set() and gateway.failure is None
    # Nothing of the gateway's own is left either (the conftest checks every task too).
    assert not any(alive(n) for n in ("receipts", "planner", "dispatcher", "gateway-supervisor"))


@pytest.fixture
async def sigterm_seen() -> AsyncIterator[asyncio.Event]:
    """Catches a SIGTERM sent to this process (the old supervisor's os.kill) for the test."""
    seen = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, seen.set)
    try:
        yield seen
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def test_a_dying_core_task_stops_the_gateway_with_the_reason(
        store: Store, caplog: pytest.LogCaptureFixture, sigterm_seen: asyncio.Event) -> None:
    adapter = LoopingAdapter("first", "sms")
    gateway = Gateway(settings(store), POLICY, store, [adapter])
    crash = asyncio.Event()

    async def watched_loop() -> None:
        await crash.wait()
        raise RuntimeError("disk full")

    gateway.add_loop("watched-loop", watched_loop)
    caplog.set_level(logging.CRITICAL, logger="warngate.service")
    async with gateway:
        assert not gateway.stopped.is_set()
        crash.set()
        async with asyncio.timeout(20):  # a ceiling for a hung test, not a timing claim
            await gateway.stopped.wait()
        # Stopped while still inside ``async with``: the supervisor unwound everything.
        assert adapter.stopped and not alive("adapter-first-loop")
        assert not any(alive(n) for n in ("receipts", "planner", "dispatcher"))
    assert gateway.failure is not None
    assert gateway.failure.task == "watched-loop"
    assert isinstance(gateway.failure.__cause__, RuntimeError)
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert critical and "watched-loop" in critical[0].getMessage()
    assert "disk full" in critical[0].getMessage()
    assert not sigterm_seen.is_set()


async def test_a_loop_that_returns_is_a_failure_too(store: Store) -> None:
    gateway = Gateway(settings(store), POLICY, store, [])

    async def gives_up() -> None:
        return None

    gateway.add_loop("gives-up", gives_up)
    async with gateway:
        async with asyncio.timeout(20):
            await gateway.stopped.wait()
    assert gateway.failure is not None and gateway.failure.task == "gives-up"
    assert "gives-up" in str(gateway.failure)


async def test_a_clean_stop_is_not_a_failure(store: Store) -> None:
    adapter = LoopingAdapter("first", "sms")
    gateway = Gateway(settings(store), POLICY, store, [adapter])
    async with gateway:
        await asyncio.sleep(0)
    assert gateway.stopped.is_set() and gateway.failure is None and adapter.stopped


async def test_a_hung_adapter_stop_is_bounded_and_receipts_are_still_written(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    adapter = HangingStop("first", "sms")
    # The receipt writer outlives the adapters: what one reports while stopping is written
    # within the grace the stop gets (the writer flushes every 0.1 s).
    gateway = Gateway(settings(store), POLICY, store, [adapter], grace=1.0)
    caplog.set_level(logging.ERROR, logger="warngate")
    try:
        async with asyncio.timeout(20):  # without the bound this never returns
            async with gateway:
                pass
        assert any("first" in r.getMessage() and "did not stop" in r.getMessage()
                   for r in caplog.records)
        # The receipt the adapter reported while stopping was still written down (it names
        # no delivery, so it is kept among the refused inputs).
        kept = await rows(store, select(rejected_inputs.c.reason, rejected_inputs.c.body))
        assert any(b"last words" in r.body for r in kept), kept
    finally:
        adapter.release.set()
        await asyncio.sleep(0)


def served(store: Store, port: int) -> Settings:
    return Settings(
        database={"url": store.engine.url.render_as_string(hide_password=False)},  # type: ignore[arg-type]
        http={"host": "127.0.0.1", "port": port,  # type: ignore[arg-type]
              "public_url": f"http://127.0.0.1:{port}"},
        auth=AuthSettings(four_eyes=False),
        adapters=(AdapterSettings(name="sms", type="sim-sms", channel="sms"),),
        ack_key=SecretStr("lifecycle-test-key-lifecycle-test-key"),
    )


async def started(port: int, serving: asyncio.Task[int]) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        while True:
            assert not serving.done(), serving.result()
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def test_serve_exits_1_with_the_reason_when_the_gateway_stops_itself(
        store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    serving = asyncio.create_task(serve(served(store, port), POLICY), name="serve")
    await started(port, serving)
    # A core loop ending for any reason (here: cancelled from outside) stops the service.
    [planner] = [t for t in asyncio.all_tasks() if t.get_name() == "planner"]
    planner.cancel()
    async with asyncio.timeout(30):
        code = await serving
    assert code == 1
    assert "core task planner stopped: cancelled" in capsys.readouterr().err


async def test_serve_exits_0_on_sigterm(store: Store) -> None:
    port = free_port()
    serving = asyncio.create_task(serve(served(store, port), POLICY), name="serve")
    await started(port, serving)
    assert not serving.done()  # its handler is installed: the signal cannot reach pytest
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await serving == 0


async def test_adapters_share_one_http_session_closed_after_they_stop(store: Store) -> None:
    from warngate.sim import SimSmsAdapter, SimVoiceAdapter

    sms = SimSmsAdapter(AdapterSettings(name="first", type="sim-sms", channel="sms"))
    voice = SimVoiceAdapter(AdapterSettings(name="second", type="sim-voice", channel="voice"))
    async with Gateway(settings(store), POLICY, store, [sms, voice]):
        session = sms.http_session
        assert isinstance(session, aiohttp.ClientSession) and not session.closed
        assert voice.http_session is session
    assert session.closed
