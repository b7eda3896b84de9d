"""Phone numbers: E.164 validation (libphonenumber) and masking for logs."""

from __future__ import annotations

import phonenumbers


class PhoneError(ValueError):
    """Not a valid phone number; the message says why."""


def to_e164(raw: str, *, default_region: str = "CN") -> str:
    """Return ``raw`` as E.164 (``+8613800138000``) or raise PhoneError.

    Numbers without a leading ``+`` are read as numbers of ``default_region``.
    """
    text = raw.strip()
    if not text:
        raise PhoneError("phone number is empty")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise PhoneError(f"{raw!r} is not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise PhoneError(f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask(phone: str | None) -> str:
    """``+8613812345678`` → ``+86138****5678``: enough to tell numbers apart in a log."""
    if not phone:
        return "-"
    if len(phone) <= 7:
        return "*" * len(phone)
    return f"{phone[:-8]}****{phone[-4:]}"
