"""The one contract every channel adapter implements, and how adapters are found.

Adapters are classes registered in the entry-point group ``warngate.adapters`` (the bundled
ones exactly as a third party's would be). An adapter raises only the errors defined here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from aiohttp import web

from warngate.settings import AdapterSettings

MessageKind = Literal["alert", "update", "cancel"]


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message to one recipient, rendered and ready for a provider."""

    delivery_id: int
    alert_id: int
    kind: MessageKind
    channel: str
    #: E.164 phone number, or a speaker id for the speaker channel.
    address: str
    level: str
    #: Short title, e.g. "夏溪县气象台发布暴雨红色预警".
    headline: str
    #: Full body in the recipient's language (description and instruction).
    text: str
    lang: str = "zh-CN"
    #: One-tap acknowledgement link (SMS) when an acknowledgement is required.
    ack_url: str | None = None
    ack_required: bool = False
    attempt: int = 1
    expires: float | None = None
    repeat: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    """The provider took the message; ``provider_ref`` links its later receipts back."""

    provider_ref: str | None = None
    #: True when the provider already confirmed delivery (e.g. a speaker's immediate ack).
    delivered: bool = False


class AdapterError(Exception):
    """Base of the errors an adapter may raise from ``send``."""


class TransientError(AdapterError):
    """Try again later (timeouts, 429, 5xx). ``retry_after`` is the provider's hint."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(AdapterError):
    """This message will never go through this way (invalid number, opted out)."""


class AuthError(AdapterError):
    """Our credentials were refused: every message on this adapter will fail until fixed."""


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """The provider's own id for one event (a status callback, a reply, a key press).

    The gateway keeps every one it has taken in, so a replay — the provider retrying a
    callback, or someone replaying a captured signed request after a restart — has no
    second effect. ``source`` is the adapter instance's name.
    """

    source: str
    key: str


ReceiptStatus = Literal["queued", "sent", "delivered", "failed", "undelivered", "no_answer",
                        "busy", "answered", "received", "playing", "played"]


class ReceiptSink(Protocol):
    """Where adapters report what happened after ``send``. Calls never block on the store."""

    def receipt(
        self,
        *,
        delivery_id: int | None = None,
        provider_ref: str | None = None,
        status: str,
        detail: str | None = None,
        event: ProviderEvent | None = None,
    ) -> None:
        """A provider receipt: delivered, failed, no-answer, played..."""

    def acknowledge(
        self,
        *,
        delivery_id: int | None = None,
        provider_ref: str | None = None,
        phone: str | None = None,
        via: str,
        detail: str | None = None,
        event: ProviderEvent | None = None,
    ) -> None:
        """A person (or a speaker's ``played``) confirmed the warning."""

    def speaker_status(self, speaker_id: str, *, online: bool) -> None:
        """A speaker came online or went offline (its retained status / last will)."""


@runtime_checkable
class Adapter(Protocol):
    name: str
    channel: str

    async def start(self, receipts: ReceiptSink) -> None: ...
    async def send(self, message: Outbound) -> SendResult: ...
    async def stop(self) -> None: ...
    def routes(self) -> list[web.RouteDef]: ...


class BaseAdapter:
    """Convenience base: stores settings, no webhooks, nothing to start or stop."""

    #: Channels this adapter class can serve; checked against the configuration.
    channels: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: AdapterSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.channel = settings.channel
        self.receipts: ReceiptSink | None = None

    async def start(self, receipts: ReceiptSink) -> None:
        self.receipts = receipts

    async def stop(self) -> None:
        return None

    def routes(self) -> list[web.RouteDef]:
        return []


class AdapterConfigError(Exception):
    """An adapter entry in the configuration cannot be used."""


def available_adapters() -> dict[str, Any]:
    """Entry-point name → entry point, for every installed adapter distribution."""
    return {ep.name: ep for ep in entry_points(group="warngate.adapters")}


def load_adapter(settings: AdapterSettings, **context: Any) -> Adapter:
    """Instantiate the adapter named by ``settings.type``.

    ``context`` carries shared resources (e.g. ``http_session``, ``public_url``) that an
    adapter class may accept as keyword arguments.
    """
    found = available_adapters()
    ep = found.get(settings.type)
    if ep is None:
        raise AdapterConfigError(
            f"adapter {settings.name!r}: type {settings.type!r} is not installed "
            f"(installed: {', '.join(sorted(found)) or 'none'})"
        )
    cls = ep.load()
    declared: tuple[str, ...] = getattr(cls, "channels", ())
    if declared and settings.channel not in declared:
        raise AdapterConfigError(
            f"adapter {settings.name!r}: type {settings.type!r} serves {list(declared)}, "
            f"not channel {settings.channel!r}"
        )
    accepted = getattr(cls, "context_keys", ())
    adapter: Adapter = cls(settings, **{k: v for k, v in context.items() if k in accepted})
    return adapter
