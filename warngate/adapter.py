"""Everything an adapter needs from the core: the contract, its errors, and how adapters
are found.

Adapters are classes registered in the entry-point group ``warngate.adapters`` (the bundled
ones exactly as a third party's would be). They derive ``BaseAdapter`` and implement
``_send``; ``BaseAdapter.send`` wraps it (started check, counters, error mapping), so only
the errors defined here ever reach the gateway. This module imports nothing else of
warngate: an adapter reads its configuration through ``AdapterConfig``, never
``warngate.settings``, and its tests use the fakes in ``warngate.testing``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar, final, runtime_checkable

import aiohttp
from aiohttp import web
from pydantic import BaseModel, SecretStr, ValidationError

log = logging.getLogger(__name__)

#: ``followup``: a grid worker's list of households to visit; ``report``: field reports passed
#: on to a duty officer. Both carry a signed link to their page (see ``page_url``).
MessageKind = Literal["alert", "update", "cancel", "nobody", "followup", "report", "silent"]

#: The page a ``followup`` or ``report`` message links to, under the gateway's public URL.
_PAGES = {"followup": "/f/", "report": "/r/"}


def page_url(message: Outbound) -> str | None:
    """The link a follow-up or forwarded-reports message carries: its page, named by the
    same signed token as the message's acknowledgement link (None for other messages).

    The dispatcher renders alert texts only, so these messages come with an
    acknowledgement link, and the SMS adapters write their words and this link instead.
    """
    page = _PAGES.get(message.kind)
    if page is None or not message.ack_url:
        return None
    base, sep, token = message.ack_url.rpartition("/ack/")
    return f"{base}{page}{token}" if sep else None


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


class NotStartedError(RuntimeError):
    """``send`` before ``start`` (or after ``stop``): a bug in the caller, not a provider's
    answer, so it is the one error besides the three above that ``send`` raises."""


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

    def field_report(
        self,
        *,
        phone: str,
        text: str,
        via: str,
        event: ProviderEvent | None = None,
    ) -> None:
        """A person sent something that is not an acknowledgement ("家里进水了"): a field
        report, stored with who sent it and passed on to the duty officer by policy.

        Sinks written before this method existed may lack it; adapters then keep the text
        as rejected input, as before.
        """


@runtime_checkable
class Adapter(Protocol):
    name: str
    channel: str

    async def start(self, receipts: ReceiptSink) -> None: ...
    async def send(self, message: Outbound) -> SendResult: ...
    async def stop(self) -> None: ...
    def routes(self) -> list[web.RouteDef]: ...


class AdapterConfig(Protocol):
    """What an adapter reads of its entry under ``adapters`` in the configuration.

    The gateway passes its ``AdapterSettings``; a test may pass any object with these
    attributes (``warngate.testing.adapter_config`` builds one).
    """

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def channel(self) -> str: ...
    #: Messages the gateway sends through this adapter at once.
    @property
    def concurrency(self) -> int: ...
    #: The adapter's own keys, validated by its own model (``parse_options``).
    @property
    def options(self) -> Mapping[str, Any]: ...


#: Failures of the network between us and the provider: worth another try, no traceback.
_NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)


class BaseAdapter:
    """The base of every adapter: subclasses implement ``_send`` (and ``start``/``stop`` and
    ``routes`` when they have something to start or webhooks to serve).

    ``send`` is final, as Home Assistant's notify entities are: the bookkeeping every adapter
    needs cannot be forgotten or done differently by one of them.
    """

    #: Channels this adapter class can serve; checked against the configuration.
    channels: ClassVar[tuple[str, ...]] = ()
    #: Shared resources this class accepts as keyword arguments from ``load_adapter``:
    #: ``http_session`` (the gateway's one ``aiohttp.ClientSession``), ``public_url``,
    #: ``record_rejection``.
    context_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: AdapterConfig) -> None:
        self.settings = settings
        self.name = settings.name
        self.channel = settings.channel
        self.receipts: ReceiptSink | None = None
        #: ``sent``, ``transient``, ``permanent``, ``auth`` and ``unexpected`` (an adapter bug
        #: mapped to ``transient``), counted by ``send``; adapters add their own.
        self.counts: Counter[str] = Counter()
        self._started = False
        self._bugs_logged: set[type[BaseException]] = set()
        #: The gateway's one HTTP client session (connection pool, DNS cache), handed over
        #: before ``start`` by ``use_http_session``; an adapter run on its own makes its own.
        self.http_session: aiohttp.ClientSession | None = None

    def use_http_session(self, session: aiohttp.ClientSession) -> None:
        """Take the gateway's shared session, unless one was given at construction."""
        if self.http_session is None:
            self.http_session = session

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # typing.final only binds those who run mypy; a third party's adapter that
        # overrides send would silently skip the error mapping the lanes rely on.
        if "send" in cls.__dict__:
            raise TypeError(f"{cls.__qualname__} overrides send(); implement _send() instead "
                            f"(send wraps it: started check, counters, error mapping)")

    async def start(self, receipts: ReceiptSink) -> None:
        """Subclasses that override this call ``await super().start(receipts)``."""
        self.receipts = receipts
        self._started = True

    async def stop(self) -> None:
        """Subclasses that override this call ``await super().stop()``."""
        self._started = False

    def routes(self) -> list[web.RouteDef]:
        return []

    @property
    def started(self) -> bool:
        return self._started

    @final
    async def send(self, message: Outbound) -> SendResult:
        """Hand ``message`` to the provider through ``_send``.

        Raises only ``TransientError``, ``PermanentError`` or ``AuthError`` (anything else
        ``_send`` lets out becomes a ``TransientError``), or ``NotStartedError``.
        """
        if not self._started:
            raise NotStartedError(f"adapter {self.name}: send() before start() or after stop()")
        try:
            result = await self._send(message)
        except TransientError:
            self.counts["transient"] += 1
            raise
        except PermanentError:
            self.counts["permanent"] += 1
            raise
        except AuthError:
            self.counts["auth"] += 1
            raise
        except _NETWORK_ERRORS as exc:
            self.counts["transient"] += 1
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # an adapter bug: the lane retries, the row is kept
            self.counts["transient"] += 1
            self.counts["unexpected"] += 1
            # Once per kind of bug: a fan-out of 100,000 must not log 100,000 tracebacks.
            if type(exc) not in self._bugs_logged:
                self._bugs_logged.add(type(exc))
                log.error("adapter %s: _send raised %r; retried as a transient error "
                          "(further %s are only counted)", self.name, exc,
                          type(exc).__name__, exc_info=exc)
            raise TransientError(f"adapter error: {exc!r}") from exc
        self.counts["sent"] += 1
        return result

    async def _send(self, message: Outbound) -> SendResult:
        """Give ``message`` to the provider; return once it has taken it.

        Raise ``TransientError`` (with ``retry_after`` when the provider says), ``PermanentError``
        or ``AuthError``; network errors and timeouts may be left to ``send`` to map.
        """
        raise NotImplementedError(f"{type(self).__qualname__} does not implement _send()")

    def metrics(self) -> dict[str, int]:
        """Counters for the metrics endpoint (``warngate_adapter_events_total``)."""
        return dict(self.counts)


class AdapterConfigError(Exception):
    """An adapter entry in the configuration cannot be used."""


def available_adapters() -> dict[str, Any]:
    """Entry-point name → entry point, for every installed adapter distribution."""
    return {ep.name: ep for ep in entry_points(group="warngate.adapters")}


def load_adapter(settings: AdapterConfig, **context: Any) -> Adapter:
    """Instantiate the adapter named by ``settings.type``.

    ``context`` carries shared resources (``http_session``, ``public_url``,
    ``record_rejection``); each is passed to the classes naming it in ``context_keys``.
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


_M = TypeVar("_M", bound=BaseModel)


def parse_options(model: type[_M], settings: AdapterConfig) -> _M:
    """Validate ``settings.options`` or raise AdapterConfigError naming every bad key."""
    try:
        return model.model_validate(settings.options)
    except ValidationError as exc:
        problems = "; ".join(
            f"options.{'.'.join(map(str, e['loc'])) or '(all)'}: {e['msg']}" for e in exc.errors()
        )
        raise AdapterConfigError(f"adapter {settings.name!r}: {problems}") from None


def read_secret(adapter: str, what: str, env: str, file: Path | None) -> SecretStr | None:
    """The secret in ``file`` if one is named, else in the environment variable ``env``;
    None if neither holds one. ``what`` names the file in errors (unreadable, empty).

    Secrets never sit in the YAML file (the configuration contract): they come from a file
    (Docker and Kubernetes secrets) or from an environment variable.
    """
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdapterConfigError(
                f"adapter {adapter!r}: cannot read {what} {file}: {exc.strerror}") from exc
        if not value:
            raise AdapterConfigError(f"adapter {adapter!r}: {what} {file} is empty")
        return SecretStr(value)
    value = os.environ.get(env, "").strip()
    return SecretStr(value) if value else None
