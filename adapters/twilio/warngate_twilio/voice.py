"""Twilio voice calls: the warning read in Mandarin, and "press 1 to confirm".

Entry point ``twilio-voice``. The call's TwiML goes inline with the create request (no
fetch round trip while the phone rings). Webhooks under ``/hooks/twilio/<adapter name>/``:

- ``gather`` — the ``<Gather>`` action (``?d=<delivery id>``): pressing 1 acknowledges.
- ``call-status`` — the call's final status: ``completed`` is an answered call (delivered,
  not acknowledged unless 1 was pressed); ``no-answer``, ``busy``, ``failed`` and
  ``canceled`` are failures that escalate at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from aiohttp import web
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.twiml.voice_response import VoiceResponse

from warngate.adapter import Outbound, PermanentError, ProviderEvent, SendResult
from warngate.phone import mask
from warngate_twilio.base import TwilioAdapter
from warngate_twilio.options import VoiceOptions
from warngate_twilio.rest import classify
from warngate_twilio.webhooks import twiml

log = logging.getLogger(__name__)

#: Twilio's limit on inline TwiML.
TWIML_LIMIT = 4000
#: Call status (Twilio's words) → receipt status (warngate's words).
CALL_STATUS = {
    "completed": "answered",
    "in-progress": "answered",
    "answered": "answered",
    "no-answer": "no_answer",
    "busy": "busy",
    "failed": "failed",
    "canceled": "failed",
}
#: A wrong key gets one more chance, then the call ends.
_MAX_TRIES = 2
#: Stands for the delivery id in cached TwiML (as it appears, XML-escaped, in the URL).
_ID_SENTINEL = -1
_ID_MARK = f"d={_ID_SENTINEL}&amp;"


class TwilioVoiceAdapter(TwilioAdapter[VoiceOptions]):
    """Calls people and reads the warning; pressing 1 acknowledges it."""

    channels = ("voice",)
    options_model: ClassVar[type[VoiceOptions]] = VoiceOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._templates: dict[tuple[str, str, bool], str] = {}

    # -- TwiML ------------------------------------------------------------------------------

    def _say(self, node: Any, text: str, *, loop: int = 1) -> None:
        o = self.options
        node.say(text, voice=o.voice, language=o.language, loop=loop)

    def _gather(self, response: VoiceResponse, delivery_id: int, tries: int) -> Any:
        return response.gather(
            num_digits=1, timeout=self.options.gather_timeout, method="POST",
            action=self.hook_url("gather", d=delivery_id, n=tries),
            action_on_empty_result=False,
        )

    def call_twiml(self, message: Outbound) -> str:
        """The TwiML of the call: the warning (repeated), then the prompt to press 1."""
        wants_key = message.ack_required and message.kind != "cancel"
        key = (message.headline, message.text, wants_key)
        template = self._templates.get(key)
        if template is None:
            # Built once per warning text (ElementTree is most of a call's CPU), then only
            # the delivery id changes.
            if len(self._templates) >= 256:
                self._templates.clear()
            template = self._templates[key] = self._build_twiml(message, wants_key)
        return template.replace(_ID_MARK, f"d={message.delivery_id}&amp;")

    def _build_twiml(self, message: Outbound, wants_key: bool) -> str:
        head = message.headline.strip().rstrip("。.!！")
        spoken = "。".join(p for p in (head, message.text.strip()) if p)
        o = self.options
        # Shorten (rarely needed: 4000 characters is minutes of speech) until it fits with
        # room for the longest delivery id.
        for cut in [*range(len(spoken), 0, -50), 0]:
            text = spoken[:cut] + ("……" if cut < len(spoken) else "")
            response = VoiceResponse()
            if wants_key:
                gather = self._gather(response, _ID_SENTINEL, 1)
                self._say(gather, text, loop=o.repeat)
                self._say(gather, o.prompt)
                self._say(response, o.no_input)
            else:
                self._say(response, text, loop=o.repeat)
            xml = str(response)
            if len(xml) <= TWIML_LIMIT - 20:
                return xml
        raise PermanentError("the call's prompts alone exceed Twilio's TwiML limit")

    # -- sending ----------------------------------------------------------------------------

    async def _send(self, message: Outbound) -> SendResult:
        if message.expires is not None and message.expires <= time.time():
            raise PermanentError("the warning expired before the call")
        xml = self.call_twiml(message)
        self.counts["requests"] += 1
        try:
            call = await self.client.calls.create_async(
                to=message.address,
                from_=self.options.from_number,
                twiml=xml,
                timeout=self.options.ring_timeout,
                status_callback=self.hook_url("call-status", d=message.delivery_id),
                status_callback_method="POST",
            )
        except (TwilioRestException, TwilioServiceException) as exc:
            raise classify(exc) from None
        log.debug("adapter %s: call %s to %s", self.name, call.sid, mask(message.address))
        return SendResult(provider_ref=str(call.sid))

    # -- webhooks ---------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(self.path("gather"), self.on_gather),
            web.post(self.path("call-status"), self.on_status),
        ]

    async def on_gather(self, request: web.Request) -> web.Response:
        """The key pressed during the call; answers with the TwiML that ends it."""
        what = "call key press"
        form = await self.guard.form(request, what)
        sink = self.sink
        call_sid = form.get("CallSid")
        try:
            delivery_id = self.delivery_id(request)
            tries = int(request.query.get("n", "1"))
        except ValueError as exc:
            return await self.guard.bad_input(request, what, str(exc))
        if delivery_id is None or not call_sid:
            return await self.guard.bad_input(request, what, "no delivery id (d) or CallSid")
        digits = form.get("Digits", "")
        response = VoiceResponse()
        if digits == "1":
            if not self.guard.repeat(("gather", call_sid, delivery_id)):
                self.counts["keys_ack"] += 1
                sink.acknowledge(delivery_id=delivery_id, provider_ref=call_sid,
                                 via="dtmf", event=ProviderEvent(
                                     self.name, f"gather:{call_sid}:{delivery_id}"))
            self._say(response, self.options.thanks)
            response.hangup()
        elif tries < _MAX_TRIES:
            self.counts["keys_other"] += 1
            gather = self._gather(response, delivery_id, tries + 1)
            self._say(gather, self.options.prompt)
            self._say(response, self.options.no_input)
        else:
            self.counts["keys_other"] += 1
            self._say(response, self.options.no_input)
            response.hangup()
        return twiml(str(response))

    async def on_status(self, request: web.Request) -> web.Response:
        """The call ended (or moved on): its outcome becomes a receipt."""
        what = "call status callback"
        form = await self.guard.form(request, what)
        sink = self.sink
        call_sid = form.get("CallSid")
        raw = (form.get("CallStatus") or "").lower()
        if not call_sid or not raw:
            return await self.guard.bad_input(request, what, "no CallSid or CallStatus")
        try:
            delivery_id = self.delivery_id(request)
        except ValueError as exc:
            return await self.guard.bad_input(request, what, str(exc))
        if self.guard.repeat(("call", call_sid, raw)):
            return web.Response(status=204)
        status = CALL_STATUS.get(raw, raw.replace("-", "_"))
        detail = raw  # Twilio's own word, e.g. "canceled" behind our "failed"
        duration = form.get("CallDuration", "")
        if duration.isdigit() and int(duration) > 0:
            detail += f", {duration}s"
        if code := form.get("ErrorCode"):
            detail += f", Twilio error {code}"
        sink.receipt(delivery_id=delivery_id, provider_ref=call_sid, status=status,
                     detail=detail, event=ProviderEvent(self.name, f"call:{call_sid}:{raw}"))
        return web.Response(status=204)
