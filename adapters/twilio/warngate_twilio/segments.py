"""How a text is cut into SMS segments, as the network (and Twilio's bill) will cut it.

GSM-7 carries 160 septets in a lone message and 153 per part of a concatenated one (the
user-data header takes the rest); characters of the extension table (``€``, ``[``, ...) take
two septets, and a phone never splits such a pair. Any other character makes the whole
message UCS-2: 70 UTF-16 code units alone, 67 per part, and a surrogate pair (emoji, rare
CJK) is never split. One Chinese character therefore turns a 160-character message into a
3-part one; the composer uses these numbers to keep what matters in the first part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: Reached through the escape character: two septets each.
_GSM_EXTENDED = frozenset("^{}\\[~]|€\f")
_GSM = _GSM_BASIC | _GSM_EXTENDED

#: Units one segment holds: (alone, as part of a concatenated message).
CAPACITY: dict[Encoding, tuple[int, int]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}


def encoding_of(text: str) -> Encoding:
    """GSM-7 when every character is in the GSM 03.38 tables, else UCS-2."""
    return "GSM-7" if _GSM.issuperset(text) else "UCS-2"


def char_units(ch: str, encoding: Encoding) -> int:
    """Septets (GSM-7) or UTF-16 code units (UCS-2) one character takes."""
    if encoding == "GSM-7":
        return 2 if ch in _GSM_EXTENDED else 1
    return 2 if ord(ch) > 0xFFFF else 1


def units(text: str, encoding: Encoding | None = None) -> int:
    """The length of ``text`` in the units segments are measured in."""
    enc = encoding or encoding_of(text)
    if enc == "GSM-7":
        return len(text) + sum(1 for ch in text if ch in _GSM_EXTENDED)
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True, slots=True)
class Split:
    """A message as it travels: its encoding and its parts, in order."""

    encoding: Encoding
    parts: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.parts)


def split(text: str) -> Split:
    """Cut ``text`` exactly where a phone's concatenation would cut it."""
    enc = encoding_of(text)
    alone, each = CAPACITY[enc]
    if units(text, enc) <= alone:
        return Split(enc, (text,) if text else ())
    parts: list[str] = []
    start, used = 0, 0
    for i, ch in enumerate(text):
        n = char_units(ch, enc)
        if used + n > each:  # this character would straddle the boundary: it starts the next
            parts.append(text[start:i])
            start, used = i, 0
        used += n
    parts.append(text[start:])
    return Split(enc, tuple(parts))


def count(text: str) -> int:
    """How many segments ``text`` is billed and delivered as (0 for an empty text)."""
    enc = encoding_of(text)
    n = units(text, enc)
    alone, each = CAPACITY[enc]
    if n <= alone:
        return 1 if text else 0
    if enc == "UCS-2" and n == len(text):
        return -(-n // each)  # no surrogate pairs: plain arithmetic, no walk
    return split(text).count


def fit(text: str, limit: int, encoding: Encoding) -> str:
    """The longest prefix of ``text`` that takes at most ``limit`` units in ``encoding``."""
    used = 0
    for i, ch in enumerate(text):
        used += char_units(ch, encoding)
        if used > limit:
            return text[:i]
    return text
