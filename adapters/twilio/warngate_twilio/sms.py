"""Twilio SMS: sending, delivery status callbacks, and replies that acknowledge.

Entry point ``twilio-sms``. Webhooks (paths under ``/hooks/twilio/<adapter name>/``):

- ``status`` — the StatusCallback of every message we send (``?d=<delivery id>``).
- ``inbound`` — configure it as the number's (or Messaging Service's) incoming-message URL;
  a reply such as ``1`` or ``收到`` acknowledges the sender's newest open delivery; any other
  text ("家里进水了") is a field report (``ReceiptSink.field_report``).
"""

from __future__ import annotations

import logging
import time
import unicodedata
from typing import Any, ClassVar

from aiohttp import web
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.twiml.messaging_response import MessagingResponse

from warngate.adapter import Outbound, PermanentError, ProviderEvent, SendResult, page_url
from warngate.phone import mask
from warngate_twilio.base import TwilioAdapter
from warngate_twilio.options import SmsOptions
from warngate_twilio.rest import classify
from warngate_twilio.sms_text import SmsText, compose_sms
from warngate_twilio.webhooks import EMPTY_TWIML, twiml

log = logging.getLogger(__name__)

#: Twilio keeps an undelivered message queued at most this long (its own upper bound).
_MAX_VALIDITY = 36_000
_TRIM = " \t\r\n.,!?~。，！？、…～；;：:\"'“”‘’()（）[]【】"


def normalise_reply(text: str) -> str:
    """``" ＯＫ！"`` → ``"ok"``: width-folded, case-folded, surrounding punctuation gone."""
    return unicodedata.normalize("NFKC", text).strip(_TRIM).casefold()


class TwilioSmsAdapter(TwilioAdapter[SmsOptions]):
    """Sends warnings as SMS through Twilio's Messages API."""

    channels = ("sms",)
    options_model: ClassVar[type[SmsOptions]] = SmsOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ack_words = frozenset(normalise_reply(w) for w in self.options.ack_words)
        self._sender: dict[str, str] = (
            {"messaging_service_sid": self.options.messaging_service_sid}
            if self.options.messaging_service_sid
            else {"from_": self.options.from_number or ""}
        )

    # -- sending ----------------------------------------------------------------------------

    def compose(self, message: Outbound) -> SmsText:
        """The text of ``message``: headline, acknowledgement line and link, then the body."""
        page = page_url(message)
        if page is not None:
            return self._compose_page(message, page)
        ack_line = None
        if message.ack_required and message.ack_url and message.kind != "cancel":
            ack_line = self._instruction(message.lang) + message.ack_url
        return compose_sms(
            headline=message.headline, body=message.text, ack_line=ack_line,
            prefix=self.options.prefix, max_segments=self.options.max_segments,
        )

    def _compose_page(self, message: Outbound, page: str) -> SmsText:
        """A grid worker's follow-up list or a duty officer's field reports: what to do and
        the link; the warning itself reached them before."""
        english = message.lang.lower().startswith("en")
        if message.kind == "followup":
            headline = ("[FOLLOW-UP] " if english else "【入户跟进】") + message.headline
            line = ("Households to visit in person: " if english
                    else "请逐户当面告知或协助转移，并记录结果，名单：") + page
        else:
            headline = ("[FIELD REPORT] " if english else "【现场报告】") + message.headline
            line = ("New field reports: " if english else "辖区有新的现场报告，请查看：") + page
        return compose_sms(headline=headline, body="", ack_line=line,
                           prefix=self.options.prefix, max_segments=self.options.max_segments)

    def _instruction(self, lang: str) -> str:
        words = self.options.ack_instruction
        primary = lang.split("-")[0].lower()
        return words.get(lang, words.get(primary, words.get("zh", "")))

    async def _send(self, message: Outbound) -> SendResult:
        extra: dict[str, Any] = {}
        if message.expires is not None:
            left = message.expires - time.time()
            if left <= 0:
                raise PermanentError("the warning expired before it could be sent")
            # Twilio drops it from its queue too once the warning no longer holds.
            extra["validity_period"] = max(1, min(_MAX_VALIDITY, int(left)))
        sms = self.compose(message)
        if sms.lead_overflows:
            log.warning("adapter %s: the acknowledgement link does not fit the first SMS "
                        "segment; shorten http.public_url", self.name)
        self.counts["requests"] += 1
        try:
            created = await self.client.messages.create_async(
                to=message.address,
                body=sms.text,
                status_callback=self.hook_url("status", d=message.delivery_id),
                attempt=message.attempt,
                **self._sender,
                **extra,
            )
        except (TwilioRestException, TwilioServiceException) as exc:
            raise classify(exc) from None
        self.counts["segments"] += sms.segments
        log.debug("adapter %s: %s to %s, %d segment(s)", self.name, created.sid,
                  mask(message.address), sms.segments)
        return SendResult(provider_ref=str(created.sid))

    # -- webhooks ---------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(self.path("status"), self.on_status),
            web.post(self.path("inbound"), self.on_inbound),
        ]

    async def on_status(self, request: web.Request) -> web.Response:
        """A message's status moved: queued, sent, delivered, undelivered, failed..."""
        what = "SMS status callback"
        form = await self.guard.form(request, what)
        sink = self.sink
        sid = form.get("MessageSid") or form.get("SmsSid")
        status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        if not sid or not status:
            return await self.guard.bad_input(request, what, "no MessageSid or MessageStatus")
        try:
            delivery_id = self.delivery_id(request)
        except ValueError as exc:
            return await self.guard.bad_input(request, what, str(exc))
        if self.guard.repeat(("status", sid, status)):
            return web.Response(status=204)
        detail = None
        if code := form.get("ErrorCode"):
            detail = f"Twilio error {code}" + (f": {m}" if (m := form.get("ErrorMessage")) else "")
        sink.receipt(delivery_id=delivery_id, provider_ref=sid, status=status, detail=detail,
                     event=ProviderEvent(self.name, f"status:{sid}:{status}"))
        return web.Response(status=204)

    async def on_inbound(self, request: web.Request) -> web.Response:
        """A text from a person; an acknowledging word confirms their newest warning."""
        what = "incoming SMS"
        form = await self.guard.form(request, what)
        sink = self.sink
        sender, body, sid = form.get("From"), form.get("Body", ""), form.get("MessageSid")
        if not sender or not sid:
            return await self.guard.bad_input(request, what, "no From or MessageSid")
        if self.guard.repeat(("inbound", sid)):
            return twiml(EMPTY_TWIML)
        if normalise_reply(body) not in self._ack_words:
            # Not an acknowledgement ("家里进水了"): a field report for the duty officer.
            self.counts["replies_other"] += 1
            report = getattr(sink, "field_report", None)
            if report is None or not body.strip():
                # A sink without field reports (or an empty text): kept for people to
                # read, never dropped.
                await self.guard.refuse(
                    request, what,
                    f"reply from {mask(sender)} is not an acknowledgement: {body[:300]!r}",
                    refused=False,
                )
                return twiml(EMPTY_TWIML)
            self.counts["field_reports"] += 1
            log.info("adapter %s: field report from %s (%d characters)", self.name,
                     mask(sender), len(body))
            report(phone=sender, text=body, via="sms",
                   event=ProviderEvent(self.name, f"inbound:{sid}"))
            return twiml(EMPTY_TWIML)
        self.counts["replies_ack"] += 1
        # The reply's own id: a captured signed "1" replayed later acknowledges nothing.
        sink.acknowledge(phone=sender, via="sms_reply", detail=f"{sid}: {body[:100]}",
                         event=ProviderEvent(self.name, f"inbound:{sid}"))
        if not self.options.ack_reply:
            return twiml(EMPTY_TWIML)
        reply = MessagingResponse()
        reply.message(self.options.ack_reply)
        return twiml(str(reply))
