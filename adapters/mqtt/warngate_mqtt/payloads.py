"""The MQTT payload contract (ARCHITECTURE.md § MQTT): encoding commands, reading acks and
statuses. Both sides use it: the adapter (commands out, acks in) and the speaker simulator
(commands in, acks out), so the two cannot drift apart.

* cmd: ``{"type": "play"|"stop", "delivery_id", "alert_id", "level", "text", "lang",
  "repeat", "expires"}`` (UTF-8 JSON, every key always present, ``expires`` may be null);
* ack: ``{"delivery_id", "status": "received"|"playing"|"played"|"failed", "detail"?}``;
* status: the bare word ``online`` or ``offline``, retained (``offline`` is the last will).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, cast

from warngate.adapter import Outbound

CommandType = Literal["play", "stop"]
AckStatus = Literal["received", "playing", "played", "failed"]
ACK_STATUSES: frozenset[str] = frozenset({"received", "playing", "played", "failed"})
LEVELS: frozenset[str] = frozenset({"blue", "yellow", "orange", "red"})
_DETAIL_MAX = 500


class PayloadError(ValueError):
    """A payload that does not follow the contract; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Command:
    """One gateway → speaker command."""

    type: CommandType
    delivery_id: int
    alert_id: int
    level: str
    text: str
    lang: str = "zh-CN"
    repeat: int = 1
    expires: float | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {"type": self.type, "delivery_id": self.delivery_id, "alert_id": self.alert_id,
             "level": self.level, "text": self.text, "lang": self.lang,
             "repeat": self.repeat, "expires": self.expires},
            ensure_ascii=False, separators=(",", ":"),
        ).encode("utf-8")


def spoken_text(message: Outbound) -> str:
    """What the speaker reads out: the headline, then the body unless it repeats it."""
    if not message.text or message.text.startswith(message.headline):
        return message.text or message.headline
    return f"{message.headline}。{message.text}"


def command_for(message: Outbound, *, repeat: int = 1) -> Command:
    """The command for one outbound message: a cancel stops, anything else plays.

    ``repeat`` is how many times the speaker plays it back to back; the message's own
    ``repeat`` wins when it asks for more.
    """
    return Command(
        type="stop" if message.kind == "cancel" else "play",
        delivery_id=message.delivery_id,
        alert_id=message.alert_id,
        level=message.level,
        text=spoken_text(message),
        lang=message.lang,
        repeat=max(repeat, message.repeat),
        expires=message.expires,
    )


def command_payload(message: Outbound, *, repeat: int = 1) -> bytes:
    """``command_for(message, repeat=repeat).encode()``, without the intermediate object
    (this runs for every command of a fan-out)."""
    return json.dumps(
        {"type": "stop" if message.kind == "cancel" else "play",
         "delivery_id": message.delivery_id, "alert_id": message.alert_id,
         "level": message.level, "text": spoken_text(message), "lang": message.lang,
         "repeat": max(repeat, message.repeat), "expires": message.expires},
        ensure_ascii=False, separators=(",", ":"),
    ).encode("utf-8")


def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{what} is not JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"{what} must be a JSON object, not {type(data).__name__}")
    return cast(dict[str, Any], data)


def _int(data: dict[str, Any], key: str, what: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{what} needs an integer {key!r}, got {value!r}")
    return value


def parse_command(payload: bytes) -> Command:
    """Read a cmd payload (the speaker's side) or raise PayloadError naming the problem."""
    data = _object(payload, "command")
    kind = data.get("type")
    if kind not in ("play", "stop"):
        raise PayloadError(f"command 'type' must be 'play' or 'stop', got {kind!r}")
    text = data.get("text")
    if not isinstance(text, str):
        raise PayloadError(f"command needs a string 'text', got {text!r}")
    level = data.get("level")
    if level not in LEVELS:
        raise PayloadError(f"command 'level' must be one of {sorted(LEVELS)}, got {level!r}")
    lang = data.get("lang", "zh-CN")
    if not isinstance(lang, str):
        raise PayloadError(f"command 'lang' must be a string, got {lang!r}")
    repeat = data.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise PayloadError(f"command 'repeat' must be a positive integer, got {repeat!r}")
    expires = data.get("expires")
    if expires is not None and (isinstance(expires, bool)
                                or not isinstance(expires, int | float)):
        raise PayloadError(f"command 'expires' must be a number or null, got {expires!r}")
    return Command(
        type=cast(CommandType, kind),
        delivery_id=_int(data, "delivery_id", "command"),
        alert_id=_int(data, "alert_id", "command"),
        level=level,
        text=text,
        lang=lang,
        repeat=repeat,
        expires=float(expires) if expires is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Ack:
    """One speaker → gateway acknowledgement of a command.

    ``delivery_id`` is set when the speaker named a numeric id; an id that is some other
    string is kept in ``ref`` so the receipt sink can report it as unknown rather than it
    vanishing here.
    """

    delivery_id: int | None
    ref: str | None
    status: AckStatus
    detail: str | None = None

    def encode(self) -> bytes:
        data: dict[str, Any] = {
            "delivery_id": self.delivery_id if self.delivery_id is not None else self.ref,
            "status": self.status,
        }
        if self.detail is not None:
            data["detail"] = self.detail
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_ack(payload: bytes) -> Ack:
    """Read an ack payload or raise PayloadError naming the problem."""
    data = _object(payload, "ack")
    status = data.get("status")
    if status not in ACK_STATUSES:
        raise PayloadError(
            f"ack 'status' must be one of {sorted(ACK_STATUSES)}, got {status!r}")
    raw_id = data.get("delivery_id")
    delivery_id: int | None = None
    ref: str | None = None
    if isinstance(raw_id, bool) or raw_id is None:
        raise PayloadError(f"ack needs a 'delivery_id', got {raw_id!r}")
    if isinstance(raw_id, int):
        delivery_id = raw_id
    elif isinstance(raw_id, str) and raw_id.strip():
        text = raw_id.strip()
        if text.isascii() and text.isdigit():
            delivery_id = int(text)
        else:
            ref = text[:64]
    else:
        raise PayloadError(f"ack 'delivery_id' must be an integer, got {raw_id!r}")
    detail = data.get("detail")
    if detail is not None and not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False)
    if detail is not None:
        detail = detail[:_DETAIL_MAX]
    return Ack(delivery_id=delivery_id, ref=ref, status=cast(AckStatus, status),
               detail=detail)


def parse_status(payload: bytes) -> bool | None:
    """``online`` → True, ``offline`` → False, empty (a cleared retained status) → None."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PayloadError("status is not UTF-8") from None
    if not text:
        return None
    # Tolerate a JSON string ("online"), which some device firmwares send.
    word = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    if word == "online":
        return True
    if word == "offline":
        return False
    raise PayloadError(f"status must be 'online' or 'offline', got {text[:40]!r}")


def encode_status(online: bool) -> bytes:
    return b"online" if online else b"offline"
