"""CAP messages become alerts (the full feed work — polling, signatures — builds on this)."""

from __future__ import annotations

import dataclasses

from warngate.alerts import NewAlert
from warngate.cap import (
    CapAlert,
    SignatureCheck,
    alert_level,
    area_shapes,
    pick_info,
    region_codes,
)
from warngate.geomatch import regions_in_area
from warngate.store import Store


def cap_to_alert(cap: CapAlert, *, actor: str, lang: str = "zh-CN") -> NewAlert:
    """Map a parsed CAP message; the info block in ``lang`` (or the nearest) gives the text."""
    info = pick_info(cap, lang)
    expires = None
    onset = None
    if info is not None:
        expires = info.expires.timestamp() if info.expires else None
        onset = info.onset.timestamp() if info.onset else None
    translations: dict[str, dict[str, str]] = {}
    for other in cap.infos:
        if other is not info:
            translations.setdefault(other.language, {
                "event": other.event, "headline": other.headline or other.event,
                "description": other.description or "",
                "instruction": other.instruction or ""})
    references = " ".join(f"{r.sender},{r.identifier},{r.sent_text}" for r in cap.references)
    return NewAlert(
        source="cap",
        sender=cap.sender,
        identifier=cap.identifier,
        sent=cap.sent.isoformat(),
        msg_type=cap.msg_type,
        references=references or None,
        status=cap.status,
        level=alert_level(cap) if cap.infos else "blue",
        event=(info.event if info else "") or cap.msg_type,
        headline=(info.headline if info and info.headline else None)
        or (info.event if info else f"{cap.msg_type} {cap.identifier}"),
        description=(info.description or "") if info else "",
        instruction=(info.instruction or "") if info else "",
        areas=region_codes(cap),
        onset=onset,
        expires=expires,
        raw=cap.raw.decode("utf-8", errors="replace"),
        created_by=actor,
        translations=translations or None,
    )


async def cap_to_alert_with_geometry(store: Store, cap: CapAlert, *, actor: str,
                                     signature: SignatureCheck | None = None) -> NewAlert:
    """As ``cap_to_alert``, plus the regions its polygons and circles cover."""
    new = cap_to_alert(cap, actor=actor)
    if signature is not None:
        new = dataclasses.replace(new, signature=str(signature))
    polygons, circles = area_shapes(cap)
    if not polygons and not circles:
        return new
    async with store.read() as conn:
        matched = await regions_in_area(conn, polygons, circles)
    areas = list(dict.fromkeys([*new.areas, *matched]))
    return dataclasses.replace(new, areas=areas)
