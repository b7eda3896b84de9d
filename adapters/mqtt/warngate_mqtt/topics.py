"""The MQTT topic contract (ARCHITECTURE.md § MQTT), in one place.

``{prefix}/speakers/{speaker_id}/cmd`` gateway → speaker; ``.../ack`` and ``.../status``
speaker → gateway. A speaker id is one topic level, and it is also the speaker's MQTT user
name in the broker's ACL (``config/mosquitto/acl``), so it may not contain the characters
that would let it span levels or match other speakers' topics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

#: Topic levels a speaker publishes on.
SpeakerTopic = Literal["ack", "status"]

DEFAULT_PREFIX = "warngate/v1"
_BAD_IN_ID = re.compile(r"[/+#\x00\s]")
_BAD_IN_PREFIX = re.compile(r"[+#\x00]")


class TopicError(ValueError):
    """A speaker id or prefix that cannot be used as (part of) an MQTT topic."""


def check_speaker_id(speaker_id: str) -> str:
    """Return ``speaker_id`` if it can be one topic level and a broker user name."""
    if not speaker_id:
        raise TopicError("a speaker id cannot be empty")
    if _BAD_IN_ID.search(speaker_id):
        raise TopicError(
            f"speaker id {speaker_id!r} contains '/', '+', '#', NUL or white space, which "
            f"would make its topics reach other speakers'"
        )
    if speaker_id.startswith("$"):
        raise TopicError(f"speaker id {speaker_id!r} starts with '$' (reserved by brokers)")
    if len(speaker_id.encode("utf-8")) > 64:
        raise TopicError(f"speaker id {speaker_id!r} is longer than 64 bytes")
    return speaker_id


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` without surrounding slashes, or raise TopicError."""
    cleaned = prefix.strip("/")
    if not cleaned:
        raise TopicError("the topic prefix cannot be empty")
    if _BAD_IN_PREFIX.search(cleaned) or "//" in cleaned:
        raise TopicError(f"topic prefix {prefix!r} contains '+', '#', NUL or an empty level")
    return cleaned


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", check_prefix(self.prefix))

    def cmd(self, speaker_id: str) -> str:
        return f"{self.prefix}/speakers/{speaker_id}/cmd"

    def ack(self, speaker_id: str) -> str:
        return f"{self.prefix}/speakers/{speaker_id}/ack"

    def status(self, speaker_id: str) -> str:
        return f"{self.prefix}/speakers/{speaker_id}/status"

    @property
    def all_acks(self) -> str:
        return f"{self.prefix}/speakers/+/ack"

    @property
    def all_statuses(self) -> str:
        return f"{self.prefix}/speakers/+/status"

    def parse(self, topic: str) -> tuple[str, SpeakerTopic] | None:
        """(speaker id, "ack" | "status") for a topic a speaker publishes on, else None."""
        head = f"{self.prefix}/speakers/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head):]
        speaker_id, sep, leaf = rest.partition("/")
        if not sep or not speaker_id or "/" in leaf:
            return None
        if leaf == "ack":
            return speaker_id, "ack"
        if leaf == "status":
            return speaker_id, "status"
        return None
