"""The adapter SDK as a third party meets it: an adapter derives ``BaseAdapter`` and
implements ``_send``; ``send`` (final) checks it was started, counts, and lets only
warngate's own errors out whatever ``_send`` raises."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import ClassVar

import aiohttp
import pytest
from pydantic import BaseModel

from warngate.adapter import (
    AdapterConfig,
    AdapterConfigError,
    AuthError,
    BaseAdapter,
    NotStartedError,
    Outbound,
    PermanentError,
    SendResult,
    TransientError,
    parse_options,
)
from warngate.testing import RecordingSink, adapter_config


def message(delivery_id: int = 1) -> Outbound:
    return Outbound(delivery_id=delivery_id, alert_id=1, kind="alert", channel="sms",
                    address="+8617000000010", level="red", headline="暴雨红色预警",
                    text="请立即转移。")


class Scripted(BaseAdapter):
    """A third party's adapter whose provider answers what the test scripted."""

    channels: ClassVar[tuple[str, ...]] = ("sms",)

    def __init__(self, settings: AdapterConfig) -> None:
        super().__init__(settings)
        self.next: BaseException | None = None

    async def _send(self, message: Outbound) -> SendResult:
        if self.next is not None:
            raise self.next
        return SendResult(provider_ref=f"P{message.delivery_id}")


@pytest.fixture
async def adapter() -> Scripted:
    a = Scripted(adapter_config("scripted", "sms", name="third-party"))
    await a.start(RecordingSink())
    return a


@pytest.mark.parametrize("leak", [
    aiohttp.ClientConnectionError("connection reset"),
    aiohttp.ServerDisconnectedError(),
    TimeoutError(),
    ConnectionRefusedError(111, "refused"),
])
async def test_network_errors_an_adapter_leaks_become_transient(
        adapter: Scripted, leak: Exception) -> None:
    adapter.next = leak
    with pytest.raises(TransientError, match=type(leak).__name__) as caught:
        await adapter.send(message())
    assert caught.value.__cause__ is leak
    assert adapter.counts == {"transient": 1}


async def test_a_bug_in_send_becomes_transient_and_its_traceback_is_logged_once(
        adapter: Scripted, caplog: pytest.LogCaptureFixture) -> None:
    adapter.next = ValueError("unexpected answer from provider")
    for delivery_id in (1, 2, 3):
        with pytest.raises(TransientError, match="ValueError"):
            await adapter.send(message(delivery_id))
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "third-party" in logged[0].getMessage()
    assert adapter.counts == {"transient": 3, "unexpected": 3}


async def test_warngate_errors_pass_through_and_are_counted(adapter: Scripted) -> None:
    transient = TransientError("429", retry_after=30)
    for error in (transient, PermanentError("21211"), AuthError("20003")):
        adapter.next = error
        with pytest.raises(type(error)) as caught:
            await adapter.send(message())
        assert caught.value is error
    assert transient.retry_after == 30
    adapter.next = None
    assert await adapter.send(message(9)) == SendResult(provider_ref="P9")
    assert adapter.counts == {"transient": 1, "permanent": 1, "auth": 1, "sent": 1}
    assert adapter.metrics() == {"transient": 1, "permanent": 1, "auth": 1, "sent": 1}


async def test_send_before_start_or_after_stop_is_refused() -> None:
    a = Scripted(adapter_config("scripted", "sms"))
    with pytest.raises(NotStartedError, match="before start"):
        await a.send(message())
    await a.start(RecordingSink())
    await a.send(message())
    await a.stop()
    with pytest.raises(NotStartedError):
        await a.send(message())
    assert a.counts == {"sent": 1}


async def test_cancellation_is_not_mapped(adapter: Scripted) -> None:
    adapter.next = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError):
        await adapter.send(message())
    assert not adapter.counts


def test_overriding_send_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="implement _send"):
        class Sneaky(BaseAdapter):
            async def send(self, message: Outbound) -> SendResult:  # type: ignore[misc]
                return SendResult()


async def test_an_adapter_without_send_says_so() -> None:
    class Empty(BaseAdapter):
        pass

    a = Empty(adapter_config("empty", "sms"))
    await a.start(RecordingSink())
    with pytest.raises(TransientError, match="NotImplementedError"):
        await a.send(message())


class RobotOptions(BaseModel):
    endpoint: str


def test_options_are_read_with_the_adapter_named_in_errors() -> None:
    config = adapter_config("x", "sms", name="robot", endpoint="https://robot.example")
    assert parse_options(RobotOptions, config).endpoint == "https://robot.example"
    with pytest.raises(AdapterConfigError, match=r"adapter 'robot': options\.endpoint"):
        parse_options(RobotOptions, adapter_config("x", "sms", name="robot"))


def test_adapters_do_not_import_the_service_settings() -> None:
    # What an adapter needs from the core is warngate.adapter (and leaf helpers): importing
    # the bundled adapters must not pull in the service's configuration.
    code = ("import sys, warngate_twilio, warngate_mqtt, warngate.adapter\n"
            "print(','.join(m for m in sys.modules if m.startswith('warngate.settings')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
