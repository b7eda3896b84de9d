"""What every Twilio webhook shares: signature check, refusal record, repeat suppression.

Twilio signs each request with the account's Auth Token over the exact URL it called and
the sorted POST parameters. We rebuild that URL from the configured public base (never from
the Host header, which a proxy rewrites and an attacker chooses), so a gateway behind a
reverse proxy validates the same string Twilio signed.
"""

from __future__ import annotations

import hmac
import logging
from collections import Counter
from collections.abc import Hashable
from typing import Protocol

from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from warngate.phone import mask

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


class RecordRejection(Protocol):
    """Keeps refused input with its reason (the gateway's ``rejected_inputs``)."""

    async def __call__(
        self,
        *,
        entry_point: str,
        source: str | None,
        reason: str,
        body: bytes | None,
        content_type: str | None = None,
    ) -> object: ...


class RecentKeys:
    """The last ``size`` keys seen: Twilio retries a callback it thinks we missed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: dict[Hashable, None] = {}

    def seen(self, key: Hashable) -> bool:
        """True if ``key`` was seen before; remembers it otherwise."""
        if self.size == 0:
            return False
        if key in self._keys:
            return True
        self._keys[key] = None
        if len(self._keys) > self.size:
            del self._keys[next(iter(self._keys))]  # dicts keep insertion order: the oldest
        return False


class WebhookGuard:
    """Validates, records and counts the webhooks of one adapter."""

    def __init__(
        self,
        *,
        adapter: str,
        auth_token: str,
        base_url: str,
        validate: bool,
        record_rejection: RecordRejection | None,
        dedupe_window: int,
    ) -> None:
        self.adapter = adapter
        self.base_url = base_url.rstrip("/")
        self.validate = validate
        self.record_rejection = record_rejection
        self._validator = RequestValidator(auth_token)
        self.recent = RecentKeys(dedupe_window)
        #: accepted / duplicate / rejected_signature / rejected_input, for metrics and tests.
        self.counts: Counter[str] = Counter()

    def url(self, path: str) -> str:
        """The public URL of one of our webhook paths (``/hooks/...?...``)."""
        return f"{self.base_url}{path}"

    async def form(self, request: web.Request, what: str) -> MultiDict[str]:
        """The signed POST parameters, or HTTP 403 (recorded) if the signature is wrong."""
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if self.validate and not signature:
            # Refused before its body is even parsed: nothing unsigned is worth the work.
            self.counts["rejected_signature"] += 1
            await self.refuse(request, what, f"{SIGNATURE_HEADER} missing")
            raise web.HTTPForbidden(text=f"{SIGNATURE_HEADER} missing\n")
        try:
            posted = await request.post()
        except ValueError as exc:  # e.g. multipart/form-data without a boundary
            reason = f"not a form: {exc}"
            self.counts["rejected_input"] += 1
            await self.refuse(request, what, reason)
            raise web.HTTPBadRequest(text=f"{reason}\n") from None
        # File uploads never come from Twilio; str() keeps any such part in the signature.
        form = MultiDict([(k, v if isinstance(v, str) else str(v)) for k, v in posted.items()])
        if not self.validate:
            self.counts["accepted"] += 1
            return form
        url = self.url(request.raw_path)
        if not signature or not self._signed(url, form, signature):
            reason = (f"{SIGNATURE_HEADER} missing" if not signature
                      else f"{SIGNATURE_HEADER} does not match {url}")
            self.counts["rejected_signature"] += 1
            await self.refuse(request, what, reason)
            raise web.HTTPForbidden(text=f"{reason}\n")
        self.counts["accepted"] += 1
        return form

    def _signed(self, url: str, form: MultiDict[str], signature: str) -> bool:
        # The URL exactly as we gave it to Twilio is what it signs: one HMAC, compared in
        # constant time. Only on a mismatch let the library try its variants (with and
        # without the default port), which costs three times as much.
        expected = self._validator.compute_signature(url, form)
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return True
        return bool(self._validator.validate(url, form, signature))

    def repeat(self, key: Hashable) -> bool:
        """True for a callback already handled (counted, to be answered without effect)."""
        if self.recent.seen(key):
            self.counts["duplicate"] += 1
            return True
        return False

    async def bad_input(self, request: web.Request, what: str, reason: str) -> web.Response:
        """A signed request we cannot use: recorded, answered 400."""
        self.counts["rejected_input"] += 1
        await self.refuse(request, what, reason)
        return web.Response(status=400, text=f"{reason}\n")

    async def refuse(self, request: web.Request, what: str, reason: str, *,
                     refused: bool = True) -> None:
        """Log and keep a request we could not use (phone numbers masked in the log only).

        ``refused=False``: answered normally but not understood (a free-text SMS reply).
        """
        body = await request.read()
        if refused:
            log.warning("adapter %s: refused %s from %s: %s", self.adapter, what,
                        request.remote, _mask_numbers(reason))
        else:
            log.info("adapter %s: %s not understood: %s", self.adapter, what,
                     _mask_numbers(reason))
        if self.record_rejection is None:
            return
        try:
            await self.record_rejection(
                entry_point=f"{request.method} {request.path}",
                source=f"twilio:{self.adapter}", reason=f"{what}: {reason}", body=body,
                content_type=request.content_type,
            )
        except Exception:
            log.exception("adapter %s: could not record a refused %s", self.adapter, what)


def _mask_numbers(text: str) -> str:
    """Mask anything that looks like an E.164 number inside a log line."""
    return " ".join(mask(w) if w.startswith("+") and w[1:].isdigit() else w
                    for w in text.split(" "))


def twiml(xml: str) -> web.Response:
    return web.Response(text=xml, content_type="text/xml", charset="utf-8")
