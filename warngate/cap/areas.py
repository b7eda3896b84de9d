"""Which parts of a CAP message say where: region codes, other geocodes, shapes, language."""

from __future__ import annotations

import re
from collections.abc import Callable

from warngate.cap.model import CapAlert, CapInfo, Pair, Point

#: GB/T 2260 administrative division codes (6 digits) and their township/village/grid
#: extensions (9, 12, 15 digits), as the roster holds them; the national list of statistical
#: division codes (统计用区划代码) pads every code to 12 digits with zero groups.
_ADMIN_CODE = re.compile(r"^\d{6}(\d{3}){0,3}$")
#: Other countries' schemes whose codes can look the same (SAME and FIPS are 6 digits too).
_FOREIGN = re.compile(r"SAME|FIPS|UGC|EMMA|NUTS|CAP-CP|ISO|ZIP|POST", re.IGNORECASE)


def _is_region(name: str, value: str) -> bool:
    return bool(_ADMIN_CODE.match(value.strip())) and not _FOREIGN.search(name)


def normalise_region(code: str) -> str:
    """A division code as the roster writes it: trailing zero groups stripped by level.

    The national list pads to 12 digits (6 county + 3 township + 3 village):
    ``339901001000`` is township ``339901001``, ``339901000000`` county ``339901``; our grid
    extension adds 3 more. No township, village or grid is numbered ``000``, so a zero group
    only ever means "the whole of the level above". Six-digit GB/T 2260 codes stay as they
    are (``130600``, a prefecture, is widened to its counties by ``covering_prefix``).
    """
    code = code.strip()
    while len(code) > 6 and code.endswith("000"):
        code = code[:-3]
    return code


def covering_prefix(code: str) -> str | None:
    """For a GB/T 2260 province or prefecture code, the prefix its counties share.

    ``130600`` (保定市) → ``1306``, ``130000`` (河北省) → ``13``; a county code → None.
    """
    if len(code) != 6 or not code.isdigit() or not code.endswith("00"):
        return None
    prefix = code[:4] if not code.endswith("0000") else code[:2]
    return prefix if prefix.strip("0") else None


def region_codes(cap: CapAlert) -> list[str]:
    """Geocode values that are administrative division codes, normalised (see
    ``normalise_region``), in order, once each."""
    seen: dict[str, None] = {}
    for info in cap.infos:
        for area in info.areas:
            for name, value in area.geocodes:
                if _is_region(name, value):
                    seen.setdefault(normalise_region(value))
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
