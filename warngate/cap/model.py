"""What a parsed CAP message holds (CAP 1.2, and 1.1 mapped onto the same shapes)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

Pair = tuple[str, str]
Point = tuple[float, float]  # (lat, lon), as CAP writes them


class CapError(Exception):
    """A message we refuse. ``rule`` is a short id; ``element`` where it went wrong."""

    def __init__(self, message: str, *, rule: str, element: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rule = rule
        self.element = element

    def __str__(self) -> str:
        where = f" at {self.element}" if self.element else ""
        return f"{self.rule}{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class CapWarning:
    """A flaw we accepted: the meaning is intact, the flawed part was ignored or mended.

    Kept with the alert (``alerts.warnings``) and shown by the API and ``cap validate``.
    """

    rule: str
    element: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"rule": self.rule, "element": self.element, "message": self.message}

    def __str__(self) -> str:
        return f"{self.rule} at {self.element}: {self.message}"


@dataclass(frozen=True, slots=True)
class CapRef:
    sender: str
    identifier: str
    sent_text: str


@dataclass(frozen=True, slots=True)
class CapResource:
    resource_desc: str
    mime_type: str | None
    size: int | None
    uri: str | None
    digest: str | None


@dataclass(frozen=True, slots=True)
class CapArea:
    area_desc: str
    polygons: tuple[tuple[Point, ...], ...] = ()
    circles: tuple[tuple[Point, float], ...] = ()  # (centre, radius km)
    geocodes: tuple[Pair, ...] = ()
    altitude: float | None = None
    ceiling: float | None = None


@dataclass(frozen=True, slots=True)
class CapInfo:
    language: str
    categories: tuple[str, ...]
    event: str
    response_types: tuple[str, ...]
    urgency: str
    severity: str
    certainty: str
    audience: str | None
    event_codes: tuple[Pair, ...]
    effective: datetime | None
    onset: datetime | None
    expires: datetime | None
    sender_name: str | None
    headline: str | None
    description: str | None
    instruction: str | None
    web: str | None
    contact: str | None
    parameters: tuple[Pair, ...]
    resources: tuple[CapResource, ...]
    areas: tuple[CapArea, ...]


@dataclass(frozen=True, slots=True)
class CapAlert:
    raw: bytes
    version: str  # "1.2" | "1.1"
    identifier: str
    sender: str
    sent: datetime
    sent_text: str
    status: str
    msg_type: str
    scope: str
    source: str | None
    restriction: str | None
    note: str | None
    references: tuple[CapRef, ...]
    incidents: tuple[str, ...]
    infos: tuple[CapInfo, ...]
    #: An XML signature is present (verification is configured per sender).
    signed: bool
    #: Flaws accepted (see ``CapWarning``), in the order found.
    warnings: tuple[CapWarning, ...] = ()
    #: The Python codec that reads ``raw`` (from its BOM or XML declaration).
    encoding: str = "utf-8"

    def text(self) -> str:
        """``raw`` as text, for display; ``raw`` itself stays the bytes as received."""
        try:
            return self.raw.decode(self.encoding)
        except (LookupError, UnicodeDecodeError):
            return self.raw.decode(self.encoding if _known(self.encoding) else "utf-8",
                                   errors="replace")


def _known(codec: str) -> bool:
    import codecs

    try:
        codecs.lookup(codec)
    except LookupError:
        return False
    return True
