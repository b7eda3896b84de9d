"""Phone numbers of a roster, normalised to E.164.

``warngate.phone.to_e164`` (libphonenumber) costs about 0.1 ms a number: 5 s for a county's
50,000 households. Almost every roster number is a Chinese mobile written as 11 digits or
``+86`` and 11 digits; those are checked here against libphonenumber's own CN patterns, which
is the test ``is_valid_number`` applies to them, at a hundredth of the cost. Everything else,
and every number that fails the quick test, goes through ``to_e164`` for its verdict and its
error message.
"""

from __future__ import annotations

import re

import phonenumbers

from warngate.phone import to_e164


def _cn_pattern(kind: str) -> re.Pattern[str]:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region("CN")
    desc = getattr(metadata, kind, None)
    pattern = getattr(desc, "national_number_pattern", None)
    if not isinstance(pattern, str):
        raise RuntimeError(f"phonenumbers has no CN {kind} pattern")
    return re.compile(pattern)


_GENERAL = _cn_pattern("general_desc")
_MOBILE = _cn_pattern("mobile")
_SHAPE = re.compile(r"(?:\+86)?(1\d{10})")
_SEPARATORS = str.maketrans("", "", " -")


def normalise_phone(raw: str) -> str:
    """``raw`` as E.164, exactly as ``to_e164(raw)`` (default region CN) answers.

    Raises:
        warngate.phone.PhoneError: not a valid phone number.
    """
    shaped = _SHAPE.fullmatch(raw.strip().translate(_SEPARATORS))
    if shaped and _MOBILE.fullmatch(shaped[1]) and _GENERAL.fullmatch(shaped[1]):
        return "+86" + shaped[1]
    return to_e164(raw)
