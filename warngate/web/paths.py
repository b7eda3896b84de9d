"""What the URL path names, checked once for every handler that takes it."""

from __future__ import annotations

from aiohttp import web

from warngate.alerts import AlertError


def alert_id(request: web.Request) -> int:
    """The ``{alert_id}`` of the path; a 404 for anything no alert can have."""
    raw = request.match_info["alert_id"]
    try:
        found = int(raw)
    except ValueError:
        raise AlertError(404, "not_found", "alert ids are numbers") from None
    if not 0 < found < 2**63:
        raise AlertError(404, "not_found", f"no alert {raw}")
    return found
