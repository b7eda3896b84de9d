"""The HTTP service: JSON API, CAP push, acknowledgement links, adapter webhooks, health."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from warngate import board
from warngate.acklinks import AckLinks
from warngate.adapter import Adapter
from warngate.alerts import Actor, AlertError, CancelRequest, ComposeRequest, record_rejection
from warngate.feeds import health as feed_health
from warngate.metrics import render_metrics
from warngate.policy import Policy
from warngate.service import Gateway, load_adapters, running_gateway
from warngate.settings import Settings
from warngate.store.schema import ALERT_STATES, DELIVERY_STATES, alerts
from warngate.web import ack
from warngate.web.auth import TokenBook

log = logging.getLogger(__name__)

GATEWAY = web.AppKey("gateway", Gateway)
TOKENS = web.AppKey("tokens", TokenBook)
ACTOR = web.RequestKey("actor", Actor)
_STATIC = Path(__file__).parent / "static"
_PUBLIC = ("/healthz", "/ack/", "/hooks/", "/static/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_M = TypeVar("_M", bound=BaseModel)
#: ``?state=`` of the receipts list: a delivery state, or who has not answered / was escalated.
RECEIPT_STATES = (*DELIVERY_STATES, "unacknowledged", "escalated")


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


def _alert_id(request: web.Request) -> int:
    raw = request.match_info["alert_id"]
    try:
        alert_id = int(raw)
    except ValueError:
        raise AlertError(404, "not_found", "alert ids are numbers") from None
    if not 0 < alert_id < 2**63:
        raise AlertError(404, "not_found", f"no alert {raw}")
    return alert_id


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
    await record_rejection(request.app[GATEWAY].store,
                           entry_point=f"{request.method} {request.path}",
                           source=_who(request), reason=reason, body=body,
                           content_type=request.content_type)


async def _json_body(request: web.Request) -> tuple[bytes, Any]:
    body = await request.read()
    try:
        return body, json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        await _reject(request, f"not JSON: {exc}", body)
        raise AlertError(400, "bad_json", f"body is not UTF-8 JSON: {exc}") from None


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
    body, data = await _json_body(request)
    req = await _validated(request, ComposeRequest, body, data, noun="alert",
                           message="the alert is not valid")
    try:
        accepted = await gw.alerts.compose(_actor(request), req)
    except AlertError as exc:
        await _reject(request, exc.message, body)
        raise
    return ok(accepted.as_json(), status=201)


async def approve(request: web.Request) -> web.Response:
    accepted = await request.app[GATEWAY].alerts.approve(_actor(request), _alert_id(request))
    return ok(accepted.as_json())


async def cancel(request: web.Request) -> web.Response:
    body, data = await _json_body(request)
    req = await _validated(request, CancelRequest, body, data, noun="cancel",
                           message='the body must be {"reason": "..."} or empty')
    result = await request.app[GATEWAY].alerts.cancel(_actor(request), _alert_id(request),
                                                      req.reason)
    return ok(result)


def _visible(actor: Actor, row: Any) -> bool:
    if actor.role == "feed":
        return False
    return not actor.township or any(a.startswith(actor.township) for a in row.areas)


async def list_alerts(request: web.Request) -> web.Response:
    actor = _actor(request)
    q = select(*board.ALERT_COLUMNS).order_by(alerts.c.id.desc()).limit(200)
    if state := _query_choice(request, "state", ALERT_STATES):
        q = q.where(alerts.c.state == state)
    async with request.app[GATEWAY].store.board() as conn:
        rows = (await conn.execute(q)).all()
    return ok({"alerts": [board.alert_json(r) for r in rows if _visible(actor, r)]})


async def _visible_alert(request: web.Request) -> Any:
    alert_id = _alert_id(request)
    async with request.app[GATEWAY].store.board() as conn:
        row = (await conn.execute(
            select(*board.ALERT_COLUMNS).where(alerts.c.id == alert_id)
        )).one_or_none()
    if row is None or not _visible(_actor(request), row):
        raise AlertError(404, "not_found", f"no alert {alert_id}")
    return row


async def get_alert(request: web.Request) -> web.Response:
    row = await _visible_alert(request)
    progress = await board.progress_snapshot(request.app[GATEWAY].store, row.id)
    return ok({**board.alert_json(row), "progress": progress})


async def receipts(request: web.Request) -> web.Response:
    row = await _visible_alert(request)
    actor = _actor(request)
    township = request.query.get("township") or None
    if actor.township:
        if township and township != actor.township:
            raise AlertError(403, "outside_township",
                             f"this token sees township {actor.township} only")
        township = actor.township
    state = _query_choice(request, "state", RECEIPT_STATES)
    limit = _query_int(request, "limit", 200, lo=1, hi=5000)
    offset = _query_int(request, "offset", 0, lo=0, hi=2**31)
    store = request.app[GATEWAY].store
    if not state:
        return web.Response(body=await board.receipts_json(store, row.id, township=township),
                            content_type="application/json", charset="utf-8")
    async with store.board() as conn:
        people = await board.receipts_people(conn, row.id, township=township, state=state,
                                             limit=limit, offset=offset)
    return ok({"alert_id": row.id, "township": township, "state": state,
               "people": people, "limit": limit, "offset": offset})


# -- CAP ------------------------------------------------------------------------------------

async def cap_push(request: web.Request) -> web.Response:
    from warngate.cap import CapError, parse_cap, verify_signature
    from warngate.sources import cap_to_alert_with_geometry

    gw = request.app[GATEWAY]
    actor = _actor(request)
    if actor.role not in ("feed", "admin"):
        return error(403, "forbidden", "this token may not submit CAP messages")
    body = await request.read()
    try:
        cap = parse_cap(body, max_bytes=gw.settings.http.max_body_bytes)
    except CapError as exc:
        await _reject(request, str(exc), body)
        return error(400, "invalid_cap", str(exc),
                     {"rule": exc.rule, "element": exc.element})
    if actor.senders and cap.sender not in actor.senders:
        reason = f"sender {cap.sender!r} is not allowed for token {actor.name!r}"
        await _reject(request, reason, body)
        return error(403, "sender_not_allowed", reason)
    signature = verify_signature(cap, gw.settings.cap.trusted(cap.sender))
    if signature.outcome == "invalid":
        reason = f"signature-invalid: {signature.detail}"
        await _reject(request, reason, body)
        return error(400, "invalid_cap", reason,
                     {"rule": "signature-invalid", "element": "alert/Signature"})
    new = await cap_to_alert_with_geometry(gw.store, cap, actor=actor.name,
                                           signature=signature)
    accepted = await gw.alerts.accept(new, actor=actor.name)
    return ok(accepted.as_json(), status=200 if accepted.duplicate else 202)


# -- hydrology ------------------------------------------------------------------------------

async def hydrology_readings(request: web.Request) -> web.Response:
    from warngate.hydrology import ReadingsBody

    gw = request.app[GATEWAY]
    actor = _actor(request)
    if actor.role not in ("feed", "admin"):
        return error(403, "forbidden", "this token may not submit gauge readings")
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
    try:
        async with gw.store.read() as conn:
            await conn.execute(select(1))
        db = "ok"
    except Exception as exc:
        db = f"error: {type(exc).__name__}"
    status = 200 if db == "ok" else 503
    feeds = feed_health(gw.feeds)
    # A feed that is down is reported, but the gateway itself still serves (200).
    overall = "ok" if status == 200 and all(f["up"] for f in feeds) else "degraded"
    return ok({"status": overall, "database": db, "lanes": sorted(gw.dispatcher.lanes),
               "feeds": feeds}, status=status)


async def metrics(request: web.Request) -> web.Response:
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
        middlewares=[errors_middleware, auth_middleware],
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
    app.router.add_post("/api/v1/cap", cap_push)
    app.router.add_post("/api/v1/hydrology/readings", hydrology_readings)
    # add_get also answers HEAD with the same handler, which shows and never acknowledges.
    app.router.add_get("/ack/{token}", ack.show)
    app.router.add_post("/ack/{token}", ack.confirm)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_static("/static/", _STATIC)
    for adapter in adapters:
        app.router.add_routes(adapter.routes())
    return app
