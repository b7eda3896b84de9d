"""The HTTP service: JSON API, CAP push, acknowledgement links, adapter webhooks, health."""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlencode

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warngate import alertviews, board
from warngate import report as accountability
from warngate.access import Action, may, require
from warngate.acklinks import AckLinks
from warngate.adapter import Adapter
from warngate.alerts import (
    Actor,
    AlertError,
    CancelRequest,
    ComposeRequest,
    NewAlert,
    record_rejection,
)
from warngate.feeds import health as feed_health
from warngate.metrics import render_metrics
from warngate.policy import Policy
from warngate.receipts import CoverError, record_for
from warngate.service import Gateway, load_adapters, running_gateway
from warngate.settings import Settings
from warngate.store.schema import ALERT_STATES, DELIVERY_STATES
from warngate.web import ack, paths
from warngate.web import field as field_pages
from warngate.web.auth import TokenBook

log = logging.getLogger(__name__)

GATEWAY = web.AppKey("gateway", Gateway)
TOKENS = web.AppKey("tokens", TokenBook)
ACTOR = web.RequestKey("actor", Actor)
#: Set once a request's refusal is kept, so the middleware does not keep it twice.
_KEPT = web.RequestKey("kept", bool)
_STATIC = Path(__file__).parent / "static"
# /f/ and /r/: follow-up and field-report pages, reached by a signed link (warngate.web.field).
_PUBLIC = ("/healthz", "/ack/", "/f/", "/r/", "/hooks/", "/static/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_M = TypeVar("_M", bound=BaseModel)
#: ``?state=`` of the receipts list: a delivery state, or who has not answered / was escalated.
RECEIPT_STATES = (*DELIVERY_STATES, *board.VIEWS)
#: Our JSON bodies are three levels deep; anything far deeper is not one of them, and deep
#: nesting exhausts Python's stack in the decoder and in validation.
MAX_JSON_DEPTH = 32


def error(status: int, code: str, message: str, detail: Any = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "detail": detail}},
        status=status,
        dumps=lambda o: json.dumps(o, ensure_ascii=False),
    )


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers in the contract's error shape, never a bare traceback."""
    try:
        return await handler(request)
    except AlertError as exc:
        if 400 <= exc.status < 500:
            await _keep_refusal(request, exc.message)
        return error(exc.status, exc.code, exc.message, exc.detail)
    except web.HTTPRequestEntityTooLarge as exc:
        if request.path.startswith("/api/"):
            await _reject(request, f"body too large: {exc.text}", None)
        limit = request.app[GATEWAY].settings.http.max_body_bytes
        return error(413, "too_large", f"request body exceeds {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except Exception as exc:
        if _client_went_away(request, exc):
            log.info("client went away during %s %s", request.method, request.path)
            # Nobody reads this answer (aiohttp drops it), and the body never fully arrived,
            # so there is no input to keep.
            return error(400, "client_disconnected", "the client closed the connection")
        log.exception("unhandled error on %s %s", request.method, request.path)
        await _keep_failed_input(request, exc)
        return error(500, "internal", "internal error; see the service log")


def _client_went_away(request: web.Request, exc: Exception) -> bool:
    """A reset because the client hung up is routine (a phone losing signal mid-upload); a
    reset met elsewhere while the client still waits is a failure like any other.

    ``aiohttp.ClientConnectionResetError`` is a ``ConnectionResetError`` too.
    """
    transport = request.transport
    return isinstance(exc, ConnectionResetError) and (transport is None
                                                      or transport.is_closing())


async def _keep_refusal(request: web.Request, reason: str) -> None:
    """Every refused POST is kept with its reason, whichever check refused it (a wrong state,
    a role, a township's scope), unless the handler kept it already."""
    if request.method != "POST" or not request.path.startswith("/api/") or request.get(_KEPT):
        return
    try:
        body: bytes | None = await request.read()
    except Exception:  # a body that cannot be read is kept without it
        body = None
    await _reject(request, reason, body)


async def _keep_failed_input(request: web.Request, exc: Exception) -> None:
    """A body that met a bug is kept like a refused one, so it can be replayed once fixed."""
    if request.method != "POST" or not request.path.startswith(("/api/", "/hooks/")):
        return
    try:
        await _reject(request, f"internal error: {type(exc).__name__}: {exc}",
                      await request.read())
    except Exception:  # the store itself may be what failed; the log has the error
        log.exception("could not keep the input of %s %s", request.method, request.path)


@web.middleware
async def query_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A NUL in a query string is refused before any handler: no database stores it in
    text, and no code, state or number contains one."""
    for name, value in request.query.items():
        if "\x00" in name or "\x00" in value:
            return error(400, "bad_query", "the query contains a NUL character",
                         {"parameter": name.replace("\x00", "\\x00")})
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/" or request.path.startswith(_PUBLIC):
        return await handler(request)
    actor = request.app[TOKENS].actor_for(request)
    if actor is None:
        return error(401, "unauthorized", "send Authorization: Bearer <token>")
    request[ACTOR] = actor
    return await handler(request)


def _who(request: web.Request) -> str | None:
    actor = request.get(ACTOR)
    return actor.name if actor is not None else request.remote


def _actor(request: web.Request) -> Actor:
    return request[ACTOR]


def _query_int(request: web.Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise AlertError(400, "bad_query", f"{name} must be a whole number from {lo} to {hi}",
                         {"parameter": name, "value": raw})
    return value


def _query_choice(request: web.Request, name: str, choices: Sequence[str]) -> str | None:
    value = request.query.get(name) or None
    if value is not None and value not in choices:
        raise AlertError(400, "bad_query", f"{name} must be one of: {', '.join(choices)}",
                         {"parameter": name, "value": value})
    return value


async def _reject(request: web.Request, reason: str, body: bytes | None) -> None:
    """Keep refused input with its reason (nothing refused vanishes)."""
    request[_KEPT] = True
    await record_rejection(request.app[GATEWAY].store,
                           entry_point=f"{request.method} {request.path}",
                           source=_who(request), reason=reason, body=body,
                           content_type=request.content_type)


async def _body(request: web.Request) -> bytes:
    """The body, decoded from its ``Content-Encoding``.

    The app decodes, not aiohttp (``auto_decompress`` is off): aiohttp refuses a body that is
    not the gzip it claims with a plain-text 400 before any handler runs, so the refusal
    would be neither in our shape nor kept. A coding we cannot undo is a 415, a body that is
    not what its coding says a 400, and one that inflates beyond the size limit a 413; each
    is kept as it came.
    """
    body = await request.read()
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return body
    limit = request.app[GATEWAY].settings.http.max_body_bytes
    if coding not in _WBITS:
        reason = f"unsupported Content-Encoding {coding!r}; send identity, gzip or deflate"
        await _reject(request, reason, body)
        raise AlertError(415, "bad_encoding", reason)
    try:
        decoded = _inflate(body, coding, limit)
    except (zlib.error, EOFError) as exc:
        reason = f"body is not valid {coding}: {exc}"
        await _reject(request, reason, body)
        raise AlertError(400, "bad_encoding", reason) from None
    if len(decoded) > limit:
        await _reject(request, f"body too large: inflates beyond {limit} bytes", body)
        raise AlertError(413, "too_large", f"request body exceeds {limit} bytes")
    return decoded


#: zlib window bits by coding: gzip, zlib-wrapped deflate (raw deflate is tried as well,
#: since many clients send that for ``deflate``).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _inflate(body: bytes, coding: str, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``body`` decoded (a small bomb stays small)."""
    wbits = [_WBITS[coding], *([-zlib.MAX_WBITS] if coding == "deflate" else [])]
    for i, bits in enumerate(wbits):
        d = zlib.decompressobj(bits)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error:
            if i + 1 < len(wbits):
                continue
            raise
        if len(out) > limit:
            return out
        if not d.eof:
            raise EOFError("the compressed data ends early")
        if d.unused_data:
            raise EOFError("data follows the compressed stream")
        return out
    raise AssertionError("unreachable")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _nul_or_depth(data: Any) -> tuple[str, str] | None:
    """Where ``data`` holds a NUL character, or nests too deep: (problem, field), or None.

    Iterative: the document may be as deep as the decoder allowed.
    """
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, where = stack.pop()
        if len(where) > MAX_JSON_DEPTH:
            return "depth", ".".join(where[:MAX_JSON_DEPTH])
        if isinstance(value, str):
            if "\x00" in value:
                return "nul", ".".join(where)
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    return "nul", ".".join((*where, key))
                stack.append((item, (*where, key)))
        elif isinstance(value, list):
            stack.extend((item, (*where, str(i))) for i, item in enumerate(value))
    return None


async def _json_body(request: web.Request) -> tuple[bytes, Any]:
    """The body as JSON: UTF-8, finite numbers, no NUL in any text, at most
    ``MAX_JSON_DEPTH`` levels deep. Anything else is a 400 with the reason, kept."""
    body = await _body(request)
    try:
        data = (json.loads(body.decode("utf-8"), parse_constant=_no_constants,
                           parse_float=_finite) if body else {})
    except RecursionError:
        reason = f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
        await _reject(request, reason, body)
        raise AlertError(400, "bad_json", reason) from None
    except (UnicodeDecodeError, ValueError) as exc:
        await _reject(request, f"not JSON: {exc}", body)
        raise AlertError(400, "bad_json", f"body is not UTF-8 JSON: {exc}") from None
    problem = _nul_or_depth(data)
    if problem is not None:
        kind, field = problem
        shown = field.replace("\x00", "\\x00")
        code, reason = "bad_json", f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
        if kind == "nul":
            # PostgreSQL cannot store NUL in text, and no warning needs one.
            code, reason = "nul_character", f"text contains a NUL character in {shown or 'body'}"
        await _reject(request, reason, body)
        raise AlertError(400, code, reason, {"field": shown})
    return body, data


async def _validated(request: web.Request, model: type[_M], body: bytes, data: Any, *,
                     noun: str, message: str) -> _M:
    """``data`` as ``model``, or a 400 listing each bad field (the refusal is kept)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]}
                  for e in exc.errors()]
        await _reject(request, f"invalid {noun}: {detail}", body)
        raise AlertError(400, f"invalid_{noun}", message, detail) from None


# -- alerts ---------------------------------------------------------------------------------

async def compose(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    actor = _actor(request)
    body, data = await _json_body(request)
    req = await _validated(request, ComposeRequest, body, data, noun="alert",
                           message="the alert is not valid")
    require(actor, Action.COMPOSE, areas=req.areas)
    accepted = await gw.alerts.compose(actor, req)
    return ok(accepted.as_json(), status=201)


async def _acted_on(request: web.Request, action: Action) -> int:
    """The alert of the path, once ``action`` on it is allowed (404 if there is none)."""
    require(_actor(request), action)
    alert_id = paths.alert_id(request)
    row = await alertviews.find_alert(request.app[GATEWAY].store, alert_id)
    if row is None:
        raise AlertError(404, "not_found", f"no alert {alert_id}")
    require(_actor(request), action, areas=row.areas)
    return alert_id


async def approve(request: web.Request) -> web.Response:
    alert_id = await _acted_on(request, Action.APPROVE)
    accepted = await request.app[GATEWAY].alerts.approve(_actor(request), alert_id)
    return ok(accepted.as_json())


async def cancel(request: web.Request) -> web.Response:
    body, data = await _json_body(request)
    req = await _validated(request, CancelRequest, body, data, noun="cancel",
                           message='the body must be {"reason": "..."} or empty')
    alert_id = await _acted_on(request, Action.CANCEL)
    result = await request.app[GATEWAY].alerts.cancel(_actor(request), alert_id, req.reason)
    return ok(result)


def _visible(actor: Actor, row: Any) -> bool:
    return bool(may(actor, Action.VIEW, areas=row.areas))


def _page_url(request: web.Request, **params: Any) -> str:
    """This list's URL with ``params`` replaced (``offset`` dropped: the cursor replaces it)."""
    query = {k: v for k, v in request.query.items() if k not in ("after", "offset")}
    query.update({k: str(v) for k, v in params.items()})
    return f"{request.path}?{urlencode(query)}"


async def list_alerts(request: web.Request) -> web.Response:
    """Newest first, ``limit`` at a time; ``next`` is the URL of the following page."""
    actor = _actor(request)
    require(actor, Action.VIEW)
    state = _query_choice(request, "state", ALERT_STATES)
    limit = _query_int(request, "limit", 200, lo=1, hi=1000)
    after = (_query_int(request, "after", 0, lo=1, hi=2**63 - 1)
             if "after" in request.query else None)
    page = await alertviews.alert_page(request.app[GATEWAY].store, state=state, after=after,
                                       limit=limit, visible=lambda r: _visible(actor, r))
    return ok({"alerts": [board.alert_json(r) for r in page.rows],
               "next": None if page.next_after is None
               else _page_url(request, after=page.next_after, limit=limit)})


async def _visible_alert(request: web.Request) -> Any:
    actor = _actor(request)
    require(actor, Action.VIEW)
    alert_id = paths.alert_id(request)
    row = await alertviews.find_alert(request.app[GATEWAY].store, alert_id)
    # Another township's alert is not there for this token (404, not 403: no probing).
    if row is None or not _visible(actor, row):
        raise AlertError(404, "not_found", f"no alert {alert_id}")
    return row


async def get_alert(request: web.Request) -> web.Response:
    row = await _visible_alert(request)
    progress = await board.progress_snapshot(request.app[GATEWAY].store, row.id)
    return ok({**board.alert_json(row), "progress": progress})


def _people_after(request: web.Request) -> tuple[str, str, int] | None:
    """``?after=`` of the people list: the ``next_after`` of the previous page."""
    raw = request.query.get("after")
    if raw is None:
        return None
    town, sep1, rest = raw.partition(":")
    village, sep2, last = rest.partition(":")
    try:
        delivery_id = int(last)
    except ValueError:
        delivery_id = 0
    if not (sep1 and sep2 and 0 < delivery_id < 2**63):
        raise AlertError(400, "bad_query",
                         "after must be the next_after of the previous page",
                         {"parameter": "after", "value": raw})
    return town, village, delivery_id


async def receipts(request: web.Request) -> web.Response:
    row = await _visible_alert(request)
    actor = _actor(request)
    township = request.query.get("township") or None
    if actor.township:
        if township and not may(actor, Action.VIEW, areas=[township]):
            raise AlertError(403, "outside_township",
                             f"this token sees township {actor.township} only")
        township = township or actor.township
    state = _query_choice(request, "state", RECEIPT_STATES)
    limit = _query_int(request, "limit", 200, lo=1, hi=5000)
    offset = _query_int(request, "offset", 0, lo=0, hi=2**31)
    after = _people_after(request)
    store = request.app[GATEWAY].store
    if not state:
        return web.Response(body=await board.receipts_json(store, row.id, township=township),
                            content_type="application/json", charset="utf-8")
    # People who must answer, one row each; "unacknowledged" is the silent ones (it listed
    # deliveries: one person three times).
    view = "silent" if state == "unacknowledged" else state
    async with store.board() as conn:
        # One more than asked tells whether a next page exists.
        if view in board.PEOPLE_VIEWS:
            people = await board.responsible_people(conn, row.id, view=view,
                                                    township=township, limit=limit + 1,
                                                    after=after)
        else:
            people = await board.receipts_people(conn, row.id, township=township,
                                                 state=state, limit=limit + 1,
                                                 offset=offset, after=after)
    more = len(people) > limit
    people = people[:limit]
    next_after = ":".join(map(str, board.people_cursor(people[-1]))) if more else None
    return ok({"alert_id": row.id, "township": township, "state": state,
               "people": people, "limit": limit, "offset": offset,
               "next_after": next_after,
               "next": None if next_after is None
               else _page_url(request, after=next_after, limit=limit)})


class CoverRequest(BaseModel):
    """Someone answers for a person: who (their contact id or roster id), how, and a note."""

    model_config = ConfigDict(extra="forbid")
    person: int | str
    by: Literal["supervisor", "staff", "grid_worker"] = "staff"
    via: Literal["call", "visit", "in_person", "sms", "other"] = "call"
    note: str | None = Field(default=None, max_length=2000)


async def record_acknowledgement(request: web.Request) -> web.Response:
    """``POST /api/v1/alerts/{id}/acknowledgements``: staff, a supervisor or a grid worker
    record that they reached a person who had not answered; the person counts as covered."""
    actor = _actor(request)
    require(actor, Action.RECORD_ACK)
    alert_id = paths.alert_id(request)
    body, data = await _json_body(request)
    req = await _validated(request, CoverRequest, body, data, noun="acknowledgement",
                           message="the acknowledgement is not valid")
    store = request.app[GATEWAY].store
    person = await alertviews.find_contact(store, req.person)
    if person is None:
        raise AlertError(404, "not_found", f"no person {req.person}")
    try:
        done = await record_for(store, alert_id, person, by=req.by, via=req.via,
                                actor=actor.name, note=req.note, township=actor.township)
    except CoverError as exc:
        status = {"not_found": 404, "outside_township": 403}.get(exc.code, 409)
        await _reject(request, str(exc), body)
        raise AlertError(status, exc.code, str(exc)) from None
    return ok(done, status=201)


async def accountability_report(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/alerts/{id}/report``: the accountability report (通报) as JSON, with the
    first page of the people who did not answer themselves in time (``limit``, ``after``);
    ``?format=csv|xlsx``: the whole report as a file. A township token sees its township."""
    row = await _visible_alert(request)
    actor = _actor(request)
    township = request.query.get("township") or None
    refused: AlertError | None = None
    if actor.township and township and not may(actor, Action.VIEW, areas=[township]):
        refused = AlertError(403, "outside_township",
                             f"this token sees township {actor.township} only")
    township = township or actor.township
    fmt = request.query.get("format") or None
    limit, after = 200, None
    try:
        limit = _query_int(request, "limit", 200, lo=1, hi=5000)
        if fmt is not None and fmt not in accountability.FORMATS:
            raise accountability.ReportError(f"format 须为 {'/'.join(accountability.FORMATS)} 之一")
        if "after" in request.query:
            after = accountability.parse_cursor(request.query["after"])
    except AlertError as exc:
        refused = refused or exc
    except accountability.ReportError as exc:
        refused = refused or AlertError(400, "bad_query", str(exc))
    if refused is not None:
        # A GET changes nothing, but its refusal is kept like any other.
        await _reject(request, refused.message, None)
        raise refused
    gw = request.app[GATEWAY]
    made = await accountability.build_report(gw.store, gw.policy, alert_id=row.id,
                                             township=township)
    if fmt is not None:
        name = accountability.file_name(made, fmt)
        headers = {"Content-Disposition": f"attachment; filename=\"report.{fmt}\"; "
                                          f"filename*=UTF-8''{quote(name)}"}
        if fmt == "xlsx":
            data = await accountability.export(gw.store, gw.policy, made, fmt)
            return web.Response(body=data, headers={**headers, "Content-Type": (
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")})
        # The list of people may be long: it streams as it is read.
        stream = web.StreamResponse(headers={**headers,
                                             "Content-Type": "text/csv; charset=utf-8"})
        await stream.prepare(request)
        async for chunk in accountability.csv_chunks(gw.store, gw.policy, made):
            await stream.write(chunk)
        await stream.write_eof()
        return stream
    people = await accountability.late_people(gw.store, gw.policy, [row.id],
                                              township=township, limit=limit + 1, after=after)
    more = len(people) > limit
    people = people[:limit]
    next_after = (accountability.format_cursor(accountability.people_cursor(people[-1]))
                  if more else None)
    return ok({**made.as_json(), "late_people": people, "limit": limit,
               "next_after": next_after,
               "next": None if next_after is None
               else _page_url(request, after=next_after, limit=limit)})


# -- CAP ------------------------------------------------------------------------------------

def _nul_field(new: NewAlert) -> str | None:
    """A text field of ``new`` holding a NUL character, which no database stores in text."""
    texts: dict[str, Any] = {
        "sender": new.sender, "identifier": new.identifier, "sent": new.sent,
        "event": new.event, "headline": new.headline, "description": new.description,
        "instruction": new.instruction, "references": new.references or "",
        "areas": " ".join(new.areas), "raw": new.raw or "",
        "translations": json.dumps(new.translations or {}, ensure_ascii=False),
    }
    return next((name for name, text in texts.items() if "\x00" in text), None)


async def cap_push(request: web.Request) -> web.Response:
    from warngate.cap import CapError, parse_cap, verify_signature
    from warngate.sources import cap_to_alert_with_geometry

    gw = request.app[GATEWAY]
    actor = _actor(request)
    require(actor, Action.PUSH_CAP)
    body = await _body(request)
    try:
        cap = parse_cap(body, max_bytes=gw.settings.http.max_body_bytes)
    except CapError as exc:
        await _reject(request, str(exc), body)
        return error(400, "invalid_cap", str(exc),
                     {"rule": exc.rule, "element": exc.element})
    # A feed submits for its own senders only, and an Update or Cancel may only name their
    # alerts: otherwise one feed's token could lift another bureau's (or a duty officer's)
    # warning. An alert is found by reference only under the sender the reference names
    # (warngate.alerts), so checking the named senders checks the referenced alerts'.
    decision = may(actor, Action.PUSH_CAP,
                   senders=[cap.sender, *(r.sender for r in cap.references)])
    if not decision:
        await _reject(request, decision.reason, body)
        return error(403, decision.code, decision.reason, decision.detail)
    signature = verify_signature(cap, gw.settings.cap.trusted(cap.sender))
    if signature.outcome == "invalid":
        reason = f"signature-invalid: {signature.detail}"
        await _reject(request, reason, body)
        return error(400, "invalid_cap", reason,
                     {"rule": "signature-invalid", "element": "alert/Signature"})
    new = await cap_to_alert_with_geometry(gw.store, cap, actor=actor.name,
                                           signature=signature)
    if (field := _nul_field(new)) is not None:
        reason = f"the message holds a NUL character (in {field}), which cannot be stored"
        await _reject(request, reason, body)
        return error(400, "invalid_cap", reason, {"rule": "nul-character", "element": field})
    accepted = await gw.alerts.accept(new, actor=actor.name)
    return ok(accepted.as_json(), status=200 if accepted.duplicate else 202)


# -- hydrology ------------------------------------------------------------------------------

async def hydrology_readings(request: web.Request) -> web.Response:
    from warngate.hydrology import ReadingsBody

    gw = request.app[GATEWAY]
    require(_actor(request), Action.READINGS)
    body, data = await _json_body(request)
    parsed = await _validated(request, ReadingsBody, body, data, noun="readings",
                              message="the readings are not valid")
    results = await gw.hydrology.apply(parsed.readings)
    unknown = sorted({r["station"] for r in results if r["outcome"] == "unknown_station"})
    if unknown:
        await _reject(request, f"unknown station(s): {', '.join(unknown)}", body)
    return ok({"results": results})


# -- health, metrics, UI (acknowledgement links: warngate.web.ack) ------------------------

async def healthz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    db = await alertviews.database_state(gw.store)
    status = 200 if db == "ok" else 503
    feeds = feed_health(gw.feeds)
    # A feed that is down is reported, but the gateway itself still serves (200).
    overall = "ok" if status == 200 and all(f["up"] for f in feeds) else "degraded"
    return ok({"status": overall, "database": db, "lanes": sorted(gw.dispatcher.lanes),
               "feeds": feeds}, status=status)


async def duty_now(request: web.Request) -> web.Response:
    """``GET /api/v1/duty?region=``: the shifts running now (of a region and those inside
    it); a township's token sees its own township only."""
    from warngate import duty

    actor = _actor(request)
    require(actor, Action.VIEW)
    region = request.query.get("region") or actor.township or None
    if region is not None and not (region.isdigit() and len(region) <= 32):
        raise AlertError(400, "bad_query", "region must be a region code (digits)",
                         {"parameter": "region", "value": region[:64]})
    if actor.township and region is not None and not region.startswith(actor.township):
        raise AlertError(403, "outside_township",
                         f"region outside township {actor.township}", region)
    async with request.app[GATEWAY].store.read() as conn:
        shifts = await duty.on_duty(conn, region=region)
    return ok({"region": region, "shifts": shifts})


async def metrics(request: web.Request) -> web.Response:
    require(_actor(request), Action.METRICS)
    return web.Response(text=await render_metrics(request.app[GATEWAY]),
                        content_type="text/plain", charset="utf-8")


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(_STATIC / "index.html")


# -- headers on every answer ----------------------------------------------------------------

#: The UI and the acknowledgement pages load their scripts and styles from /static/ and
#: nothing inline, so markup that slips into a page (an alert headline from any CAP sender)
#: cannot run; no other site may frame our pages or be the target of our forms.
_CSP = ("default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'")
_SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    # The acknowledgement token is in the URL: no Referer may carry it to another site.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # aiohttp's default names Python's and its own version.
    "Server": "warngate",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """A response signal, not a middleware: it also sees static files, the router's 404s and
    the answers aiohttp makes from exceptions, which no middleware returns."""
    response.headers.update(_SECURITY_HEADERS)
    if not request.path.startswith("/static/"):
        # Receipt boards, personal data and acknowledgement pages: never kept by a proxy or
        # the browser's cache (a shared phone's back button must not show someone's link).
        response.headers["Cache-Control"] = "no-store"


def build_app(settings: Settings, policy: Policy,
              adapters: list[Adapter] | None = None) -> web.Application:
    """The whole service as one aiohttp application; starting it starts the gateway."""
    app = web.Application(
        client_max_size=settings.http.max_body_bytes,
        # Bodies are decoded by the handlers that read them (_body): see there why.
        handler_args={"auto_decompress": False},
        middlewares=[errors_middleware, query_middleware, auth_middleware],
    )
    app[TOKENS] = TokenBook(settings.auth.tokens)
    app.on_response_prepare.append(_security_headers)
    ack.setup(app, public_url=settings.http.public_url)
    if adapters is None:
        async def reject(**kw: Any) -> int:
            # Adapters' webhooks keep what they refuse, like every other entry point.
            return await record_rejection(app[GATEWAY].store, **kw)

        adapters = load_adapters(settings, policy, public_url=settings.http.public_url,
                                 record_rejection=reject)

    async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
        async with running_gateway(settings, policy, adapters) as gw:
            app[GATEWAY] = gw
            app[ack.ACK_LINKS] = AckLinks(gw.store, gw.receipts, gw.ack_key,
                                          clock=gw.clock.now)
            yield

    app.cleanup_ctx.append(gateway_ctx)
    app.router.add_post("/api/v1/alerts", compose)
    app.router.add_get("/api/v1/alerts", list_alerts)
    app.router.add_get("/api/v1/alerts/{alert_id}", get_alert)
    app.router.add_post("/api/v1/alerts/{alert_id}/approve", approve)
    app.router.add_post("/api/v1/alerts/{alert_id}/cancel", cancel)
    app.router.add_get("/api/v1/alerts/{alert_id}/receipts", receipts)
    app.router.add_get("/api/v1/alerts/{alert_id}/report", accountability_report)
    app.router.add_post("/api/v1/alerts/{alert_id}/acknowledgements",
                        record_acknowledgement)
    app.router.add_post("/api/v1/cap", cap_push)
    app.router.add_post("/api/v1/hydrology/readings", hydrology_readings)
    # add_get also answers HEAD with the same handler, which shows and never acknowledges.
    app.router.add_get("/ack/{token}", ack.show)
    app.router.add_post("/ack/{token}", ack.confirm)
    field_pages.setup(app, gateway=GATEWAY, actor=ACTOR)  # follow-ups, field reports
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/duty", duty_now)
    app.router.add_get("/", index)
    app.router.add_static("/static/", _STATIC)
    for adapter in adapters:
        app.router.add_routes(adapter.routes())
    return app
