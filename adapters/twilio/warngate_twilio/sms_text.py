"""The words of one warning SMS, laid out so the first segment can stand alone.

Concatenated SMS arrive out of order or not at all on weak rural networks, and many phones
show only the first part in a notification. So the first segment carries the headline, the
acknowledgement instruction and the one-tap link; the body follows and is cut (visibly, with
an ellipsis) to the configured number of segments rather than sent as an endless bill.
"""

from __future__ import annotations

from dataclasses import dataclass

from warngate_twilio import segments
from warngate_twilio.segments import CAPACITY, Encoding

_ELLIPSIS: dict[Encoding, str] = {"GSM-7": "...", "UCS-2": "…"}


@dataclass(frozen=True, slots=True)
class SmsText:
    text: str
    #: The part that must arrive first: prefix, headline, acknowledgement instruction, link.
    lead: str
    encoding: Encoding
    segments: int
    #: The headline or the body had to be shortened to fit.
    shortened: bool
    #: The lead did not fit one segment even with the headline cut (an overlong link).
    lead_overflows: bool = False


def compose_sms(
    *,
    headline: str,
    body: str,
    ack_line: str | None,
    prefix: str = "",
    max_segments: int,
) -> SmsText:
    """Lay out one SMS: ``prefix + headline``, ``ack_line`` (instruction and link), body.

    ``max_segments`` bounds the whole text; the body is shortened first, then the headline
    (only as far as the lead must fit the first segment). Never returns more segments than
    ``max_segments`` unless the lead alone needs more.
    """
    if max_segments < 1:
        raise ValueError("max_segments must be at least 1")
    headline = headline.strip()
    body = body.strip()
    tail = f"\n{ack_line}" if ack_line else ""
    lead = f"{prefix}{headline}{tail}"
    full = f"{lead}\n{body}" if body else lead
    enc = segments.encoding_of(full)
    alone, each = CAPACITY[enc]
    shortened = False
    overflow = False

    # The lead must fit the first part; when the whole text is one part it has the lot.
    first_room = alone if segments.units(full, enc) <= alone else each
    if segments.units(lead, enc) > first_room:
        ellipsis = _ELLIPSIS[enc]
        room = first_room - segments.units(f"{prefix}{ellipsis}{tail}", enc)
        if room >= 2:
            headline = segments.fit(headline, room, enc) + ellipsis
            shortened = True
        else:
            overflow = True  # even an empty headline would not make room for the link
        lead = f"{prefix}{headline}{tail}"
        full = f"{lead}\n{body}" if body else lead

    if segments.count(full) > max_segments and body:
        body = _cut_body(lead, body, enc, max_segments)
        shortened = True
        full = f"{lead}\n{body}" if body else lead
    return SmsText(
        text=full, lead=lead, encoding=segments.encoding_of(full),
        segments=segments.count(full), shortened=shortened, lead_overflows=overflow,
    )


def _cut_body(lead: str, body: str, enc: Encoding, max_segments: int) -> str:
    """The longest body prefix (plus an ellipsis) that keeps the text in ``max_segments``."""
    ellipsis = _ELLIPSIS[enc]

    def fits(k: int) -> bool:
        cut = body[:k].rstrip() + ellipsis if k else ""
        text = f"{lead}\n{cut}" if cut else lead
        return segments.count(text) <= max_segments

    low, high = 0, len(body)  # fits(low) holds (the lead alone is within bounds or overflows)
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return body[:low].rstrip() + ellipsis if low else ""
