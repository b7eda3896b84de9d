"""Acknowledgement link tokens: the delivery id plus a truncated HMAC, nothing stored.

``3f2a-k7x9q2mz4d`` style: short enough for the first SMS segment, unguessable enough that
nobody acknowledges on someone else's behalf (50 bits of MAC, and links expire with alerts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

_MAC_CHARS = 10


def _mac(key: bytes, delivery_id: int) -> str:
    digest = hmac.new(key, str(delivery_id).encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode()[:_MAC_CHARS].lower()


def make_token(key: bytes, delivery_id: int) -> str:
    return f"{delivery_id:x}-{_mac(key, delivery_id)}"


def verify_token(key: bytes, token: str) -> int | None:
    """The delivery id the token names, or None if it is not one of ours."""
    head, sep, mac = token.partition("-")
    if not sep or len(head) > 16 or len(mac) != _MAC_CHARS:
        return None
    try:
        delivery_id = int(head, 16)
    except ValueError:
        return None
    return delivery_id if hmac.compare_digest(_mac(key, delivery_id), mac.lower()) else None


def load_or_create_key(path: Path) -> bytes:
    """A key kept beside the data, for installs that did not configure ``ack_key``."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    path.write_text(key.hex())
    path.chmod(0o600)
    return key
