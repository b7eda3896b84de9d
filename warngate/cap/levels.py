"""CAP → our colour level (blue < yellow < orange < red), over the whole message.

1. A colour the sender states wins: any ``eventCode`` or ``parameter`` value naming one
   (Chinese 蓝色/黄色/橙色/红色, as the CMA profile writes them, or blue/yellow/orange/red
   words, as MeteoAlarm's ``awareness_level`` "2; yellow; Moderate" does), or, in a value
   named as a level, the national grades Ⅰ/Ⅱ/Ⅲ/Ⅳ级 (特别严重/严重/较重/一般 = red/orange/
   yellow/blue). The highest over all ``info`` blocks counts.
2. Otherwise severity, the highest over all ``info`` blocks:

   ========== ======
   severity   level
   ========== ======
   Extreme    red
   Severe     orange
   Moderate   yellow
   Minor      blue
   Unknown    blue
   ========== ======

   An ``info`` whose certainty is ``Unlikely`` counts one step lower (not below blue):
   an unlikely extreme event is a warning to prepare, not to evacuate.
"""

from __future__ import annotations

import re

from warngate.cap.model import CapAlert, CapInfo

LEVELS = ("blue", "yellow", "orange", "red")
_SEVERITY = {"Extreme": 3, "Severe": 2, "Moderate": 1, "Minor": 0, "Unknown": 0}
_COLOURS = (
    (3, re.compile(r"红色|\bred\b", re.IGNORECASE)),
    (2, re.compile(r"橙色|\borange\b|\bamber\b", re.IGNORECASE)),
    (1, re.compile(r"黄色|\byellow\b", re.IGNORECASE)),
    (0, re.compile(r"蓝色|\bblue\b|\bgreen\b", re.IGNORECASE)),
)
#: The national warning grades (突发事件预警级别), read only in values named as a level:
#: "一般" or "I级" elsewhere in a message mean nothing about its level.
_NOT_ROMAN = r"(?<![IVXⅠⅡⅢⅣ])"
_GRADES = (
    (3, re.compile(rf"Ⅰ级|{_NOT_ROMAN}I级|一级|特别严重")),
    (2, re.compile(rf"Ⅱ级|{_NOT_ROMAN}II级|二级|(?<!特别)严重")),
    (1, re.compile(rf"Ⅲ级|{_NOT_ROMAN}III级|三级|较重")),
    (0, re.compile(rf"Ⅳ级|{_NOT_ROMAN}IV级|四级|一般")),
)
#: Value names whose values state a colour level (checked case-insensitively).
_LEVEL_NAMES = re.compile(r"level|colou?r|awareness|预警级别|级别|signal", re.IGNORECASE)
#: Value names that can only be a level: a value under one of these we cannot read is a
#: level we do not know (``awareness_type`` or ``signal`` values need not name one).
_LEVEL_ONLY_NAMES = re.compile(r"level|colou?r|级别|等级", re.IGNORECASE)


def _rank(value: str, *, grades: bool) -> int | None:
    for rank, pattern in _COLOURS:
        if pattern.search(value):
            return rank
    if grades:
        for rank, pattern in _GRADES:
            if pattern.search(value):
                return rank
    return None


def stated_colour(info: CapInfo) -> int | None:
    best: int | None = None
    for name, value in (*info.event_codes, *info.parameters):
        named = bool(_LEVEL_NAMES.search(name))
        if not named and not re.search("[蓝黄橙红]色", value):
            continue
        rank = _rank(value, grades=named)
        if rank is not None:
            best = rank if best is None else max(best, rank)
    return best


def unreadable_levels(info: CapInfo) -> list[tuple[str, str]]:
    """(name, value) pairs that state a level we cannot map to a colour."""
    return [(name, value) for name, value in (*info.event_codes, *info.parameters)
            if _LEVEL_ONLY_NAMES.search(name) and value.strip()
            and _rank(value, grades=True) is None]


def severity_known(info: CapInfo) -> bool:
    return info.severity in _SEVERITY and info.severity != "Unknown"


def _by_severity(info: CapInfo) -> int:
    rank = _SEVERITY.get(info.severity, 0)
    if info.certainty == "Unlikely":
        rank = max(0, rank - 1)
    return rank


def alert_level(cap: CapAlert) -> str:
    if not cap.infos:
        return "blue"
    stated = [c for info in cap.infos if (c := stated_colour(info)) is not None]
    if stated:
        return LEVELS[max(stated)]
    return LEVELS[max(_by_severity(info) for info in cap.infos)]
