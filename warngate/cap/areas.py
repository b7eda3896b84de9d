"""Which parts of a CAP message say where: region codes, other geocodes, shapes, language."""

from __future__ import annotations

import re
from collections.abc import Callable

from warngate.cap.model import CapAlert, CapInfo, Pair, Point

#: GB/T 2260 administrative division codes and their township/village/grid extensions.
_ADMIN_CODE = re.compile(r"^\d{6}(\d{3}){0,3}$")
#: Other countries' schemes whose codes can look the same (SAME and FIPS are 6 digits too).
_FOREIGN = re.compile(r"SAME|FIPS|UGC|EMMA|NUTS|CAP-CP|ISO|ZIP|POST", re.IGNORECASE)


def _is_region(name: str, value: str) -> bool:
    return bool(_ADMIN_CODE.match(value.strip())) and not _FOREIGN.search(name)


def region_codes(cap: CapAlert) -> list[str]:
    """Geocode values that are administrative division codes, in order, once each."""
    seen: dict[str, None] = {}
    for info in cap.infos:
        for area in info.areas:
            for name, value in area.geocodes:
                if _is_region(name, value):
                    seen.setdefault(value.strip())
    return list(seen)


def other_geocodes(cap: CapAlert) -> list[Pair]:
    """Geocodes that are not region codes (SAME, UGC, EMMA_ID, ...), kept for the record."""
    out: dict[Pair, None] = {}
    for info in cap.infos:
        for area in info.areas:
            for name, value in area.geocodes:
                if not _is_region(name, value):
                    out.setdefault((name, value))
    return list(out)


def area_shapes(cap: CapAlert) -> tuple[list[tuple[Point, ...]], list[tuple[Point, float]]]:
    """All polygons and circles of the message, for matching regions by geometry."""
    polygons = [p for info in cap.infos for a in info.areas for p in a.polygons]
    circles = [c for info in cap.infos for a in info.areas for c in a.circles]
    return polygons, circles


def pick_info(cap: CapAlert, lang: str) -> CapInfo | None:
    """The info block for a reader of ``lang``: exact, same language, Chinese, English, first."""
    if not cap.infos:
        return None
    want = lang.lower()
    primary = want.split("-")[0]
    by_lang = [(i.language.lower(), i) for i in cap.infos]
    tests: list[Callable[[str], bool]] = [
        lambda code: code == want,
        lambda code: code.split("-")[0] == primary,
        lambda code: code.startswith("en"),
    ]
    for test in tests:
        for code, info in by_lang:
            if test(code):
                return info
    return cap.infos[0]
