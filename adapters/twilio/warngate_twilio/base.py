"""What the SMS and voice adapters share: options, credentials, the client, the webhooks."""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Generic, TypeVar

import aiohttp
from aiohttp import web
from twilio.rest import Client

from warngate.adapter import (
    AdapterConfig,
    AdapterConfigError,
    BaseAdapter,
    ReceiptSink,
    parse_options,
)
from warngate_twilio.options import _Options, webhook_base
from warngate_twilio.rest import BaseUrlHttpClient, make_client
from warngate_twilio.webhooks import RecordRejection, WebhookGuard

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
Opts = TypeVar("Opts", bound=_Options)


class TwilioAdapter(BaseAdapter, Generic[Opts]):
    """Base of the Twilio adapters; subclasses set ``options_model`` and their routes."""

    #: Shared resources the gateway hands to adapter classes (see ``warngate.adapter``).
    context_keys: ClassVar[tuple[str, ...]] = ("http_session", "public_url", "record_rejection")
    options_model: ClassVar[type[_Options]]

    def __init__(
        self,
        settings: AdapterConfig,
        *,
        http_session: aiohttp.ClientSession | None = None,
        public_url: str | None = None,
        record_rejection: RecordRejection | None = None,
    ) -> None:
        super().__init__(settings)
        if not _NAME.match(settings.name):
            raise AdapterConfigError(
                f"adapter {settings.name!r}: the name is part of webhook URLs, so it may only "
                f"hold letters, digits, '-' and '_'"
            )
        self.options: Opts = parse_options(self.options_model, settings)  # type: ignore[assignment]
        token, key_secret = self.options.resolve_secrets(settings.name)
        self._auth_token = token
        self._api_key = (
            (self.options.api_key_sid, key_secret.get_secret_value())
            if self.options.api_key_sid and key_secret is not None else None
        )
        self.guard = WebhookGuard(
            adapter=settings.name,
            auth_token=token.get_secret_value(),
            base_url=webhook_base(self.options, public_url, settings.name),
            validate=self.options.validate_signatures,
            record_rejection=record_rejection,
            dedupe_window=self.options.dedupe_window,
        )
        self.http_session = http_session
        self._client: Client | None = None
        self._http: BaseUrlHttpClient | None = None

    # -- life -------------------------------------------------------------------------------

    async def start(self, receipts: ReceiptSink) -> None:
        self._client, self._http = make_client(
            account_sid=self.options.account_sid,
            auth_token=self._auth_token.get_secret_value(),
            api_key=self._api_key,
            base_url=str(self.options.api_base_url),
            timeout=self.options.request_timeout,
            max_connections=self.settings.concurrency,
            session=self.http_session,
        )
        await super().start(receipts)

    async def stop(self) -> None:
        await super().stop()
        if self._http is not None:
            await self._http.close()
        self._client = self._http = None

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError(f"adapter {self.name} used before start()")
        return self._client

    @property
    def sink(self) -> ReceiptSink:
        if self.receipts is None:
            raise web.HTTPServiceUnavailable(text="adapter not started\n")
        return self.receipts

    # -- webhooks ---------------------------------------------------------------------------

    def path(self, leaf: str) -> str:
        """The path of one of this adapter's webhooks."""
        return f"/hooks/twilio/{self.name}/{leaf}"

    def hook_url(self, leaf: str, **query: Any) -> str:
        """The public URL Twilio is told to call for ``leaf``."""
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return self.guard.url(self.path(leaf) + (f"?{qs}" if qs else ""))

    @staticmethod
    def delivery_id(request: web.Request) -> int | None:
        """The ``d`` query parameter we put in callback URLs; ValueError if malformed."""
        raw = request.query.get("d")
        if raw is None:
            return None
        if not raw.isdigit():
            raise ValueError(f"d={raw!r} is not a delivery id")
        return int(raw)

    def metrics(self) -> dict[str, int]:
        """Counters of sending (``send``'s, plus ``requests`` and ``segments``) and of webhooks
        (``webhook_*``) for the metrics endpoint."""
        out = super().metrics()
        out.update({f"webhook_{k}": v for k, v in self.guard.counts.items()})
        return out
