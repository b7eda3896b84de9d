"""The grid worker's follow-up page, the duty officer's field-report page, and their API.

- ``GET /f/{token}``: the households the grid worker must reach for one warning (name,
  address, full phone number: they must call), why, and what was recorded; a form per
  household and one for a field report. ``POST /f/{token}`` records. GET and HEAD change
  nothing (link previewers fetch links). The token is the follow-up message's signed
  acknowledgement token (``warngate.followup``): it names the grid worker and the warning.
  No CSRF token: the unguessable token is in the path, and a post a browser says came from
  another site is refused (as for ``/ack/``).
- ``GET /r/{token}``: the field reports of a duty officer's township for one warning.
- ``GET /api/v1/alerts/{id}/followups``, ``GET /api/v1/alerts/{id}/evacuation``,
  ``GET /api/v1/field-reports``: authenticated; a township token sees its township only.

Handlers render what ``warngate.followup`` and ``warngate.fieldreports`` decide; pages are
rendered by the autoescaping environment ``warngate.web.ack.setup`` installs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from warngate import alertviews, fieldreports, followup
from warngate.access import Action, may, require
from warngate.acktoken import verify_token
from warngate.alerts import Actor, AlertError, record_rejection
from warngate.messages import LEVEL_ZH
from warngate.service import Gateway
from warngate.web import paths
from warngate.web.ack import _foreign_origin

_KEYS = web.AppKey("field_keys", tuple)

_INVALID = "此链接无效。请以短信中的链接为准；如有疑问，请联系村（社区）或镇值班人员。"


def setup(app: web.Application, *, gateway: web.AppKey[Gateway],
          actor: web.RequestKey[Actor]) -> None:
    """Add the pages and the API; ``gateway`` and ``actor`` are the app's own keys."""
    app[_KEYS] = (gateway, actor)
    # add_get also answers HEAD with the same handler, which never records anything.
    app.router.add_get("/f/{token}", show_followups)
    app.router.add_post("/f/{token}", post_followups)
    app.router.add_get("/r/{token}", show_reports)
    app.router.add_get("/api/v1/alerts/{alert_id}/followups", api_followups)
    app.router.add_get("/api/v1/alerts/{alert_id}/evacuation", api_evacuation)
    app.router.add_get("/api/v1/field-reports", api_field_reports)


def _gw(request: web.Request) -> Gateway:
    gateway, _ = request.app[_KEYS]
    gw: Gateway = request.app[gateway]
    return gw


def _actor(request: web.Request) -> Actor:
    _, actor = request.app[_KEYS]
    who: Actor = request[actor]
    return who


# -- pages ----------------------------------------------------------------------------------

async def _refuse_page(request: web.Request, status: int, title: str, reason: str,
                       body: bytes | None = None, *, message: str = _INVALID) -> web.Response:
    """A refused link or form: a page in Chinese, and the refusal kept with its reason
    (never the token itself: a valid one would let anyone reading the table act)."""
    await record_rejection(_gw(request).store,
                           entry_point=f"{request.method} {request.path[:3]}<token>",
                           source=request.remote, reason=reason, body=body,
                           content_type=request.content_type if body else None)
    return aiohttp_jinja2.render_template("field_invalid.html", request,
                                          {"title": title, "message": message},
                                          status=status)


def _delivery(request: web.Request) -> int | None:
    delivery_id = verify_token(_gw(request).ack_key, request.match_info["token"])
    return delivery_id if delivery_id is not None and 0 < delivery_id < 2**63 else None


def _list_context(fl: followup.FollowupList, **extra: Any) -> dict[str, Any]:
    done = sum(1 for h in fl.households if h.outcome is not None)
    return {
        "title": "入户跟进名单", "fl": fl, "level_zh": LEVEL_ZH.get(fl.level, ""),
        "live": followup.live(fl.alert_state), "reasons": followup.REASON_ZH,
        "outcomes": followup.OUTCOME_ZH, "done": done, "notice": "", "error": "",
        "fmt_time": _fmt_time, **extra,
    }


def _fmt_time(at: float | None) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(at)) if at else ""


async def _find_list(request: web.Request) -> followup.FollowupList | None:
    delivery_id = _delivery(request)
    if delivery_id is None:
        return None
    return await followup.find_list(_gw(request).store, delivery_id)


async def show_followups(request: web.Request) -> web.Response:
    """GET and HEAD: the list; records nothing."""
    fl = await _find_list(request)
    if fl is None:
        return await _refuse_page(request, 404, "链接无效", "follow-up link token invalid")
    return aiohttp_jinja2.render_template("followup.html", request, _list_context(fl))


def _int_field(form: Any, name: str, *, lo: int, hi: int, label: str) -> int | None:
    raw = str(form.get(name, "")).strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise followup.RecordError(f"{label}应为{lo}至{hi}的整数")
    return value


async def post_followups(request: web.Request) -> web.Response:
    """Record a household's outcome (``form=outcome``) or a field report (``form=report``)."""
    body = await request.read()
    if _foreign_origin(request):
        return await _refuse_page(request, 403, "请从短信中的链接打开",
                                  "follow-up form posted from another site", body,
                                  message="请从短信中的链接打开本页后再提交。")
    fl = await _find_list(request)
    if fl is None:
        return await _refuse_page(request, 404, "链接无效", "follow-up link token invalid",
                                  body)
    form = await request.post()
    kind = form.get("form")
    store = _gw(request).store
    try:
        if kind == "outcome":
            followup_id = _int_field(form, "followup", lo=1, hi=2**63 - 1, label="住户编号")
            if followup_id is None:
                raise followup.RecordError("请选择住户")
            people = _int_field(form, "people", lo=0, hi=1000, label="转移人数")
            note = str(form.get("note", "")).strip()[:500] or None
            await followup.record_outcome(store, fl, followup_id=followup_id,
                                          outcome=str(form.get("outcome", "")),
                                          people=people, note=note)
            notice = "已记录。"
        elif kind == "report":
            text = str(form.get("text", "")).strip()
            trapped = _int_field(form, "trapped", lo=0, hi=100000, label="被困人数")
            evacuated = _int_field(form, "evacuated", lo=0, hi=100000, label="已转移人数")
            damage = str(form.get("damage", "")).strip()[:2000] or None
            if not (text or damage or trapped or evacuated):
                raise followup.RecordError("请填写现场情况")
            await fieldreports.submit(store, contact_id=fl.grid_worker_id,
                                      alert_id=fl.alert_id, text=text[:2000],
                                      trapped=trapped, evacuated=evacuated, damage=damage)
            notice = "现场报告已提交。"
        else:
            raise followup.RecordError("无法识别的表单")
    except followup.RecordError as exc:
        await record_rejection(store, entry_point=f"{request.method} /f/<token>",
                               source=f"grid_worker:{fl.grid_worker_id}",
                               reason=f"follow-up form refused: {exc}", body=body,
                               content_type=request.content_type)
        fl = await followup.find_list(store, fl.delivery_id) or fl
        return aiohttp_jinja2.render_template("followup.html", request,
                                              _list_context(fl, error=str(exc)), status=400)
    fl = await followup.find_list(store, fl.delivery_id) or fl
    return aiohttp_jinja2.render_template("followup.html", request,
                                          _list_context(fl, notice=notice))


async def show_reports(request: web.Request) -> web.Response:
    delivery_id = _delivery(request)
    found = (await fieldreports.find_forwarded(_gw(request).store, delivery_id)
             if delivery_id is not None else None)
    if found is None:
        return await _refuse_page(request, 404, "链接无效", "field-report link token invalid")
    return aiohttp_jinja2.render_template("field_reports.html", request, {
        "title": "现场报告", "found": found, "fmt_time": _fmt_time})


# -- API --------------------------------------------------------------------------------------

def _ok(data: Any) -> web.Response:
    return web.json_response(data, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def _township(request: web.Request, actor: Actor) -> str | None:
    """``?township=``, held to the token's own township."""
    township = request.query.get("township") or None
    if actor.township:
        if township and not may(actor, Action.VIEW, areas=[township]):
            raise AlertError(403, "outside_township",
                             f"this token sees township {actor.township} only")
        township = township or actor.township
    return township


def _query_id(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 0 < value < 2**63:
        raise AlertError(400, "bad_query", f"{name} must be a positive whole number",
                         {"parameter": name, "value": raw})
    return value


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "200")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise AlertError(400, "bad_query", "limit must be a whole number from 1 to 1000",
                         {"parameter": "limit", "value": raw})
    return value


async def _visible_alert(request: web.Request) -> tuple[int, str | None]:
    actor = _actor(request)
    require(actor, Action.VIEW)
    alert_id = paths.alert_id(request)
    row = await alertviews.find_alert(_gw(request).store, alert_id)
    # A township token reads the follow-ups of its own township of any alert covering it.
    if row is None or not (may(actor, Action.VIEW, areas=row.areas) or (
            actor.township and any(actor.township.startswith(a) or a.startswith(
                actor.township) for a in row.areas))):
        raise AlertError(404, "not_found", f"no alert {alert_id}")
    return alert_id, _township(request, actor)


def _next(request: web.Request, after: int | None) -> str | None:
    if after is None:
        return None
    from urllib.parse import urlencode
    query = {k: v for k, v in request.query.items() if k != "after"}
    query["after"] = str(after)
    return f"{request.path}?{urlencode(query)}"


async def api_followups(request: web.Request) -> web.Response:
    """``?township=&after=&limit=``: the households followed up, by id."""
    alert_id, township = await _visible_alert(request)
    limit = _limit(request)
    rows = await followup.followup_page(_gw(request).store, alert_id, township=township,
                                        after=_query_id(request, "after"), limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    after = rows[-1]["id"] if more else None
    return _ok({"alert_id": alert_id, "township": township, "followups": rows,
                "next_after": after, "next": _next(request, after)})


async def api_evacuation(request: web.Request) -> web.Response:
    """Households followed up, evacuated and people moved, per village and township."""
    alert_id, township = await _visible_alert(request)
    return _ok(await followup.evacuation_counts(_gw(request).store, alert_id,
                                                township=township))


async def api_field_reports(request: web.Request) -> web.Response:
    """``?alert=&township=&after=&limit=``: newest first."""
    actor = _actor(request)
    require(actor, Action.VIEW)
    township = _township(request, actor)
    limit = _limit(request)
    rows = await fieldreports.report_page(
        _gw(request).store, alert_id=_query_id(request, "alert"), township=township,
        after=_query_id(request, "after"), limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    after = rows[-1].id if more else None
    return _ok({"township": township, "reports": [fieldreports.report_json(r) for r in rows],
                "next_after": after, "next": _next(request, after)})
