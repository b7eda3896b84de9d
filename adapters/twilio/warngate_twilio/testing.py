"""A fake Twilio at the network boundary, for warngate's tests and benchmarks and for anyone
testing code that sits behind these adapters: the REST API the real ``twilio`` library
calls, and the callbacks Twilio makes back, signed exactly as Twilio signs them.

``FakeTwilio`` is a real aiohttp application on 127.0.0.1. It implements the two resources
warngate uses (``Messages.json`` and ``Calls.json`` under ``/2010-04-01/Accounts/{sid}/``)
with Twilio's form-encoded requests, HTTP Basic authentication and JSON answers, records every
request, and can be told to misbehave: the next N requests fail with 429 (``Retry-After``) or
500, one number answers a Twilio error code (21211 invalid, 21610 opted out...), or the whole
API is down until told otherwise.

As Twilio, it then calls the gateway back: ``message_status``, ``inbound_sms``, ``press`` (a
key during a call) and ``call_status`` POST form parameters to the URLs the gateway gave,
with ``X-Twilio-Signature`` from ``RequestValidator.compute_signature``. With ``autopilot``
it plays a whole population by itself: messages are sent then delivered (or undelivered for
``unreachable`` numbers), and calls end the way ``call_outcome`` says for each number.

``adapter_rig`` starts one adapter against the fake with its webhooks served on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import resource
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Generic, Literal, TypeVar

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from warngate.adapter import AdapterConfig
from warngate.testing import RecordingSink, free_port, serving
from warngate_twilio.base import TwilioAdapter

__all__ = [
    "AdapterRig", "CallOutcome", "FakeTwilio", "Recorded", "RejectionLog", "Resource",
    "adapter_rig", "free_port", "serving", "sms_segments", "twilio_options",
]

CallOutcome = Literal["press1", "press2", "answer", "no-answer", "busy", "failed"]
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_GATHER_ACTION = re.compile(r'<Gather[^>]*action="([^"]+)"')
_ERRORS = {
    20003: (401, "Authenticate"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21214: (400, "'To' phone number cannot be reached."),
    21408: (400, "Permission to send an SMS has not been enabled for the region indicated by "
                 "the 'To' number: {to}."),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' or 'MessagingServiceSid' parameter is required to send a message."),
    21604: (400, "A 'To' phone number is required."),
    21205: (400, "Url parameter is required."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21614: (400, "'To' number is not a valid mobile number"),
}


@dataclass
class Recorded:
    """One request the fake received, and what it answered."""

    at: float
    method: str
    path: str
    form: dict[str, str]
    answered: int = 0
    code: int | None = None


@dataclass
class Resource:
    """A message or a call the fake accepted."""

    kind: Literal["message", "call"]
    sid: str
    to: str
    form: dict[str, str]
    status: str
    num_segments: int = 1

    @property
    def status_callback(self) -> str | None:
        return self.form.get("StatusCallback")


@dataclass
class _Failure:
    status: int
    code: int | None
    retry_after: str | None


def sms_segments(body: str) -> int:
    """Twilio's count, independently of warngate's code (GSM extension table ignored)."""
    if all(ord(c) < 128 for c in body):
        n, alone, each = len(body), 160, 153
    else:
        n, alone, each = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if n <= alone else -(-n // each)


@dataclass
class FakeTwilio:
    """The fake; ``async with FakeTwilio(...) as fake`` serves it on ``fake.base_url``."""

    account_sid: str = "AC" + "0" * 32
    auth_token: str = "fake-auth-token"
    #: API keys accepted besides the account's own credentials: sid → secret.
    api_keys: dict[str, str] = field(default_factory=dict)
    #: Seconds every REST answer takes (to make concurrency visible).
    latency: float = 0.0
    #: Play the population: status callbacks and call outcomes without being asked.
    autopilot: bool = False
    #: Numbers whose messages end ``undelivered`` under autopilot.
    unreachable: set[str] = field(default_factory=set)
    #: How each number handles a call under autopilot (default: ``default_call``).
    call_outcome: dict[str, CallOutcome] = field(default_factory=dict)
    default_call: CallOutcome = "press1"
    #: Keep every request (the benchmark turns it off to measure only rate and concurrency).
    keep_requests: bool = True

    def __post_init__(self) -> None:
        self.requests: list[Recorded] = []
        self.resources: dict[str, Resource] = {}
        self.by_number: dict[str, list[Resource]] = {}
        self.counts: dict[str, int] = {"messages": 0, "calls": 0, "refused": 0}
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._queued: list[_Failure] = []
        self._numbers: dict[str, int] = {}
        self._down: _Failure | None = None
        self._seq = itertools.count(1)
        self._validator = RequestValidator(self.auth_token)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.callback_answers: list[tuple[str, int]] = []
        self.base_url = ""

    # -- misbehaviour on demand -----------------------------------------------------------

    def fail_next(self, n: int, *, status: int = 500, code: int | None = None,
                  retry_after: float | str | None = None) -> None:
        """The next ``n`` create requests fail with ``status`` (and ``Retry-After``)."""
        ra = None if retry_after is None else str(retry_after)
        self._queued.extend(_Failure(status, code, ra) for _ in range(n))

    def fail_number(self, number: str, code: int) -> None:
        """Every create request to ``number`` answers Twilio error ``code`` (21211, 21610...)."""
        self._numbers[number] = code

    def down(self, status: int = 500, *, retry_after: float | None = None) -> None:
        """Every request fails with ``status`` until ``up()``."""
        self._down = _Failure(status, None, None if retry_after is None else str(retry_after))

    def up(self) -> None:
        self._down = None

    # -- serving --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        base = "/2010-04-01/Accounts/{account}"
        app.router.add_post(base + "/Messages.json", self._create_message)
        app.router.add_post(base + "/Calls.json", self._create_call)
        # Not Twilio's: lets a benchmark read and reset the fake running in another process.
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/_fake/reset", self._reset)
        return app

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {**self.counts, "max_in_flight": self.max_in_flight, "first_at": self.first_at,
                "last_at": self.last_at, "cpu": usage.ru_utime + usage.ru_stime}

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.counts, 0)
        self.max_in_flight = 0
        self.first_at = self.last_at = None
        self.requests.clear()
        self.resources.clear()
        self.by_number.clear()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.stats())

    async def __aenter__(self) -> FakeTwilio:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession()
        return self.base_url

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the REST API ---------------------------------------------------------------------

    def _error(self, status: int, code: int | None, *, retry_after: str | None = None,
               **fmt: str) -> web.Response:
        message = _ERRORS.get(code or 0, (status, "Internal Server Error"))[1].format(**fmt)
        if status == 429 and code is None:
            code, message = 20429, "Too Many Requests"
        body = {"code": code, "message": message, "status": status,
                "more_info": f"https://www.twilio.com/docs/errors/{code}"}
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return web.json_response(body, status=status, headers=headers)

    def _authorised(self, request: web.Request) -> bool:
        if request.match_info["account"] != self.account_sid:
            return False
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        if user == self.account_sid:
            return secrets.compare_digest(password, self.auth_token)
        return user in self.api_keys and secrets.compare_digest(password, self.api_keys[user])

    async def _admit(self, request: web.Request, kind: str) -> tuple[Recorded, web.Response | None]:
        """Common to both resources: record, authenticate, apply the failure modes."""
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        now = time.monotonic()
        self.first_at = self.first_at if self.first_at is not None else now
        self.last_at = now
        rec = Recorded(now, request.method, request.path, form)
        if self.keep_requests:
            self.requests.append(rec)
        if self.latency:
            await asyncio.sleep(self.latency)
        to = form.get("To", "")
        failure: _Failure | None = None
        if not self._authorised(request):
            failure = _Failure(401, 20003, None)
        elif self._down is not None:
            failure = self._down
        elif self._queued:
            failure = self._queued.pop(0)
        elif not to:
            failure = _Failure(400, 21604, None)
        elif not _E164.match(to):
            failure = _Failure(400, 21211, None)
        elif to in self._numbers:
            failure = _Failure(400, self._numbers[to], None)
        elif kind == "message" and not form.get("Body"):
            failure = _Failure(400, 21602, None)
        elif kind == "message" and not (form.get("From") or form.get("MessagingServiceSid")):
            failure = _Failure(400, 21603, None)
        elif kind == "call" and not (form.get("Twiml") or form.get("Url")):
            failure = _Failure(400, 21205, None)
        if failure is None:
            return rec, None
        self.counts["refused"] += 1
        rec.answered, rec.code = failure.status, failure.code
        return rec, self._error(failure.status, failure.code, retry_after=failure.retry_after,
                                to=to)

    async def _create_message(self, request: web.Request) -> web.Response:
        self._enter()
        try:
            rec, refused = await self._admit(request, "message")
            if refused is not None:
                return refused
            form = rec.form
            sid = f"SM{next(self._seq):032x}"
            status = "accepted" if form.get("MessagingServiceSid") else "queued"
            msg = Resource("message", sid, form["To"], form, status,
                           num_segments=sms_segments(form["Body"]))
            self._keep(msg)
            self.counts["messages"] += 1
            rec.answered = 201
            if self.autopilot:
                self._spawn(self._play_message(msg))
            return web.json_response(self._message_json(msg), status=201)
        finally:
            self._leave()

    async def _create_call(self, request: web.Request) -> web.Response:
        self._enter()
        try:
            rec, refused = await self._admit(request, "call")
            if refused is not None:
                return refused
            sid = f"CA{next(self._seq):032x}"
            call = Resource("call", sid, rec.form["To"], rec.form, "queued")
            self._keep(call)
            self.counts["calls"] += 1
            rec.answered = 201
            if self.autopilot:
                self._spawn(self._play_call(call))
            return web.json_response(self._call_json(call), status=201)
        finally:
            self._leave()

    def _enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        self.in_flight -= 1

    def _keep(self, r: Resource) -> None:
        if self.keep_requests:
            self.resources[r.sid] = r
            self.by_number.setdefault(r.to, []).append(r)

    def _common_json(self, r: Resource) -> dict[str, Any]:
        now = formatdate(usegmt=True)
        return {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "sid": r.sid,
            "to": r.to, "from": r.form.get("From"), "status": r.status,
            "date_created": now, "date_updated": now, "price": None, "price_unit": "USD",
        }

    def _message_json(self, m: Resource) -> dict[str, Any]:
        return {
            **self._common_json(m), "body": m.form["Body"], "direction": "outbound-api",
            "messaging_service_sid": m.form.get("MessagingServiceSid"), "date_sent": None,
            "num_segments": str(m.num_segments), "num_media": "0", "error_code": None,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{m.sid}.json",
        }

    def _call_json(self, c: Resource) -> dict[str, Any]:
        return {
            **self._common_json(c), "direction": "outbound-api", "duration": None,
            "start_time": None, "end_time": None, "parent_call_sid": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{c.sid}.json",
        }

    # -- Twilio calling back ----------------------------------------------------------------

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        return str(self._validator.compute_signature(url, params))

    async def post(self, url: str, params: Mapping[str, str], *,
                   signature: str | None = "compute") -> tuple[int, str]:
        """POST ``params`` to ``url`` as Twilio does; ``signature=None`` leaves it out."""
        assert self._session is not None, "start the fake first"
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if signature == "compute":
            headers["X-Twilio-Signature"] = self.sign(url, params)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        async with self._session.post(url, data=dict(params), headers=headers) as resp:
            text = await resp.text()
            self.callback_answers.append((url, resp.status))
            return resp.status, text

    def message(self, to: str, index: int = -1) -> Resource:
        """The ``index``-th message accepted for ``to`` (the last by default)."""
        return [r for r in self.by_number[to] if r.kind == "message"][index]

    def call(self, to: str, index: int = -1) -> Resource:
        return [r for r in self.by_number[to] if r.kind == "call"][index]

    async def message_status(self, msg: Resource, status: str, *, error_code: int | None = None,
                             **kwargs: Any) -> tuple[int, str]:
        """The StatusCallback Twilio makes when a message moves to ``status``."""
        msg.status = status
        params = {"MessageSid": msg.sid, "SmsSid": msg.sid, "AccountSid": self.account_sid,
                  "MessageStatus": status, "SmsStatus": status, "To": msg.to,
                  "From": msg.form.get("From", "+15005550006"), "ApiVersion": "2010-04-01"}
        if msg.form.get("MessagingServiceSid"):
            params["MessagingServiceSid"] = msg.form["MessagingServiceSid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        url = msg.status_callback
        assert url, f"message {msg.sid} was sent without a StatusCallback"
        return await self.post(url, params, **kwargs)

    async def inbound_sms(self, url: str, *, from_: str, body: str, to: str = "+15005550006",
                          sid: str | None = None, **kwargs: Any) -> tuple[int, str]:
        """A person texts our number; Twilio forwards it to the incoming-message URL."""
        sid = sid or f"SM{next(self._seq):032x}"
        params = {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid,
                  "AccountSid": self.account_sid, "From": from_, "To": to, "Body": body,
                  "NumMedia": "0", "NumSegments": "1", "ApiVersion": "2010-04-01",
                  "SmsStatus": "received", "FromCountry": "CN", "ToCountry": "US"}
        return await self.post(url, params, **kwargs)

    def gather_action(self, call: Resource) -> str:
        """The ``<Gather action>`` URL in the call's TwiML (XML-unescaped)."""
        found = _GATHER_ACTION.search(call.form.get("Twiml", ""))
        assert found, f"call {call.sid} asks for no key"
        return found.group(1).replace("&amp;", "&")

    async def press(self, call: Resource, digits: str, *, action: str | None = None,
                    **kwargs: Any) -> tuple[int, str]:
        """The callee presses ``digits``: Twilio posts them to the Gather action."""
        call.status = "in-progress"
        params = {"CallSid": call.sid, "AccountSid": self.account_sid, "Digits": digits,
                  "From": call.form.get("From", ""), "To": call.to, "CallStatus": "in-progress",
                  "Direction": "outbound-api", "ApiVersion": "2010-04-01",
                  "FinishedOnKey": ""}
        return await self.post(action or self.gather_action(call), params, **kwargs)

    async def call_status(self, call: Resource, status: str, *, duration: int = 0,
                          **kwargs: Any) -> tuple[int, str]:
        """The call's StatusCallback (``completed``, ``no-answer``, ``busy``, ``failed``)."""
        call.status = status
        params = {"CallSid": call.sid, "AccountSid": self.account_sid, "CallStatus": status,
                  "From": call.form.get("From", ""), "To": call.to,
                  "Direction": "outbound-api", "ApiVersion": "2010-04-01",
                  "CallDuration": str(duration), "Duration": str(max(1, duration // 60))}
        url = call.status_callback
        assert url, f"call {call.sid} was placed without a StatusCallback"
        return await self.post(url, params, **kwargs)

    # -- autopilot ------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name="fake-twilio-autopilot")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _play_message(self, msg: Resource) -> None:
        await asyncio.sleep(0.01)  # after the create response, as the real one does
        await self.message_status(msg, "sent")
        if msg.to in self.unreachable:
            await self.message_status(msg, "undelivered", error_code=30003)
        else:
            await self.message_status(msg, "delivered")

    async def _play_call(self, call: Resource) -> None:
        await asyncio.sleep(0.01)
        outcome = self.call_outcome.get(call.to, self.default_call)
        if outcome in ("no-answer", "busy", "failed"):
            await self.call_status(call, outcome)
            return
        if outcome in ("press1", "press2") and "<Gather" in call.form.get("Twiml", ""):
            await self.press(call, outcome[-1])
        await self.call_status(call, "completed", duration=42)

    async def settle(self, within: float = 10.0) -> None:
        """Wait until every autopilot callback has been made."""
        async with asyncio.timeout(within):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def summary(self) -> str:
        return json.dumps(self.counts)


@dataclass
class RejectionLog:
    """A ``record_rejection`` hook for adapter-level tests: keeps what it is given."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, *, entry_point: str, source: str | None, reason: str,
                       body: bytes | None, content_type: str | None = None) -> None:
        self.entries.append({"entry_point": entry_point, "source": source, "reason": reason,
                             "body": body, "content_type": content_type})


def twilio_options(fake: FakeTwilio, **extra: Any) -> dict[str, Any]:
    """Adapter options pointing the real twilio library at ``fake``."""
    return {"account_sid": fake.account_sid, "from_number": "+15005550006",
            "api_base_url": fake.base_url, **extra}


_A = TypeVar("_A", bound="TwilioAdapter[Any]")


@dataclass
class AdapterRig(Generic[_A]):
    """One Twilio adapter started against the fake, its webhooks served on loopback."""

    fake: FakeTwilio
    adapter: _A
    sink: RecordingSink
    rejections: RejectionLog
    public_url: str

    def url(self, leaf: str, query: str = "") -> str:
        """The URL of one of the adapter's webhooks, as Twilio is told it."""
        return f"{self.public_url}/hooks/twilio/{self.adapter.name}/{leaf}{query}"


@contextlib.asynccontextmanager
async def adapter_rig(adapter_class: type[_A], settings: AdapterConfig, fake: FakeTwilio, *,
                      http_session: aiohttp.ClientSession | None = None,
                      ) -> AsyncIterator[AdapterRig[_A]]:
    """``adapter_class`` started on ``settings`` (options from ``twilio_options(fake)``), its
    receipts in a ``RecordingSink`` and its webhooks served on a loopback port."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    rejections = RejectionLog()
    adapter = adapter_class(settings, http_session=http_session, public_url=public,
                            record_rejection=rejections)
    sink = RecordingSink()
    await adapter.start(sink)
    app = web.Application()
    app.router.add_routes(adapter.routes())
    try:
        async with serving(app, port):
            yield AdapterRig(fake, adapter, sink, rejections, public)
    finally:
        await adapter.stop()
