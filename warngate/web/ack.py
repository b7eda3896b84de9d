"""The acknowledgement link pages: ``GET /ack/{token}`` shows, ``POST /ack/{token}`` confirms.

The handlers render what ``warngate.acklinks`` decides; they never touch tables.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web

from warngate.acklinks import AckLink, AckLinks, LinkState
from warngate.messages import LEVEL_ZH

ACK_LINKS = web.AppKey("ack_links", AckLinks)
#: The host in ``public_url``: behind a proxy that rewrites Host, our own form's origin.
_PUBLIC_HOST = web.AppKey("ack_public_host", str)

_ENDED_TEXT = {
    LinkState.CANCELLED: ("预警已解除", "此预警已解除，无需再确认。"),
    LinkState.EXPIRED: ("预警已过期", "此预警已过有效期，无需再确认。"),
    LinkState.SUPERSEDED: ("预警已更新", "此预警已被新的预警取代，请以最新通知为准，无需再确认。"),
}


def setup(app: web.Application, *, public_url: str) -> None:
    """Pages are rendered with autoescaping on: alert texts come from outside senders."""
    app[_PUBLIC_HOST] = urlsplit(public_url).netloc.lower()
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("warngate.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _page(request: web.Request, link: AckLink | None, *, status: int = 200,
          just_confirmed: bool = False) -> web.Response:
    if link is None:
        return aiohttp_jinja2.render_template("ack_invalid.html", request,
                                              {"title": "链接无效"}, status=404)
    context: dict[str, Any] = {
        "link": link, "level_zh": LEVEL_ZH.get(link.level, ""),
        "just_confirmed": just_confirmed, "title": f"{LEVEL_ZH.get(link.level, '')}预警",
        "ended_text": "",
    }
    if link.state in _ENDED_TEXT:
        context["title"], context["ended_text"] = _ENDED_TEXT[link.state]
    elif link.state is LinkState.ACKNOWLEDGED:
        context["title"] = "已确认收到"
    return aiohttp_jinja2.render_template("ack.html", request, context, status=status)


async def show(request: web.Request) -> web.Response:
    """GET (and HEAD, which aiohttp answers with the same handler minus the body).

    Never acknowledges: messaging apps and security scanners fetch every link in a message
    before, or without, the person reading it.
    """
    link = await request.app[ACK_LINKS].look_up(request.match_info["token"])
    return _page(request, link)


async def confirm(request: web.Request) -> web.Response:
    """The "确认收到" button.

    No CSRF token: the URL itself carries an unguessable HMAC of the delivery id, so a page
    elsewhere cannot post for someone without already holding their link, and whoever holds
    the link can acknowledge anyway. A post that a browser says came from another site is
    still refused, as defence in depth.
    """
    if _foreign_origin(request):
        return aiohttp_jinja2.render_template(
            "ack_invalid.html", request, {"title": "请从预警短信中的链接确认"}, status=403)
    link = await request.app[ACK_LINKS].confirm(request.match_info["token"])
    if link is not None and link.pending:
        return _page(request, link, status=202)
    return _page(request, link, just_confirmed=True)


def _foreign_origin(request: web.Request) -> bool:
    """Whether the browser says the form was posted from another site.

    Lenient on purpose: phones' browsers and SMS apps often send neither header, and with
    ``Referrer-Policy: no-referrer`` a browser sends ``Origin: null`` for our own form.
    Only a named origin that is not ours is refused.
    """
    ours = {request.host.lower(), request.app[_PUBLIC_HOST]}
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc.lower() not in ours
    referer = request.headers.get("Referer")
    if referer:
        return urlsplit(referer).netloc.lower() not in ours
    return False
