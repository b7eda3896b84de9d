"""CAP → our colour level (blue < yellow < orange < red), over the whole message.

1. A colour the sender states wins: any ``eventCode`` or ``parameter`` value naming one
   (Chinese 蓝色/黄色/橙色/红色, as the CMA profile writes them, or blue/yellow/orange/red
   words, as MeteoAlarm's ``awareness_level`` "2; yellow; Moderate" does). The highest over
   all ``info`` blocks counts.
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
#: Value names whose values state a colour level (checked case-insensitively).
_LEVEL_NAMES = re.compile(r"level|colou?r|awareness|预警级别|级别|signal", re.IGNORECASE)


def stated_colour(info: CapInfo) -> int | None:
    best: int | None = None
    for name, value in (*info.event_codes, *info.parameters):
        if not _LEVEL_NAMES.search(name) and not re.search("[蓝黄橙红]色", value):
            continue
        for rank, pattern in _COLOURS:
            if pattern.search(value):
                best = rank if best is None else max(best, rank)
                break
    return best


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
