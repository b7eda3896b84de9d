"""CAP messages become alerts (the full feed work — polling, signatures — builds on this)."""

from __future__ import annotations

import dataclasses

from sqlalchemy import String, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.alerts import NewAlert
from warngate.cap import (
    CapAlert,
    SignatureCheck,
    alert_level,
    area_shapes,
    pick_info,
    region_codes,
)
from warngate.cap.areas import covering_prefix
from warngate.geomatch import regions_in_area
from warngate.store import Store
from warngate.store.schema import regions


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
        # Read in the message's own encoding (GB18030, UTF-16, ...); the bytes are kept too.
        raw=cap.text(),
        raw_bytes=cap.raw,
        created_by=actor,
        translations=translations or None,
        warnings=tuple(w.as_json() for w in cap.warnings),
    )


async def cap_to_alert_with_geometry(store: Store, cap: CapAlert, *, actor: str,
                                     signature: SignatureCheck | None = None) -> NewAlert:
    """As ``cap_to_alert``, plus the regions its polygons and circles cover, and province or
    prefecture codes widened to the counties of ours they hold."""
    new = cap_to_alert(cap, actor=actor)
    if signature is not None:
        new = dataclasses.replace(new, signature=str(signature))
    polygons, circles = area_shapes(cap)
    wide = [code for code in new.areas if covering_prefix(code)]
    if not polygons and not circles and not wide:
        return new
    async with store.read() as conn:
        areas = await _widen(conn, new.areas) if wide else list(new.areas)
        matched = await regions_in_area(conn, polygons, circles) if polygons or circles \
            else []
    return dataclasses.replace(new, areas=list(dict.fromkeys([*areas, *matched])))


_COUNTIES_UNDER = (
    select(regions.c.code)
    .where(regions.c.level == "county",
           regions.c.code.startswith(bindparam("prefix", type_=String())))
    .order_by(regions.c.code)
)


async def _widen(conn: AsyncConnection, codes: list[str]) -> list[str]:
    """A province or prefecture code (``130600``, 保定市) stands for the counties of ours
    inside it; one that holds none of ours stays, so it is reported as unknown."""
    out: list[str] = []
    for code in codes:
        prefix = covering_prefix(code)
        counties = list((await conn.execute(_COUNTIES_UNDER, {"prefix": prefix})).scalars()) \
            if prefix else []
        out += counties or [code]
    return out
