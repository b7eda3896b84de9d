"""Safe CAP parsing: a size limit, no DTDs or entities (defusedxml), the OASIS schema (lxml),
then the rules the schema cannot express. Every refusal is a ``CapError`` naming the rule
and the element."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden
from defusedxml import ElementTree as SafeET
from lxml import etree

from warngate.cap.model import (
    CapAlert,
    CapArea,
    CapError,
    CapInfo,
    CapRef,
    CapResource,
    Pair,
    Point,
)

NAMESPACES = {
    "urn:oasis:names:tc:emergency:cap:1.2": "1.2",
    "urn:oasis:names:tc:emergency:cap:1.1": "1.1",
}
_DSIG = "{http://www.w3.org/2000/09/xmldsig#}Signature"
_SCHEMA_DIR = Path(__file__).parent / "schema"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=True)


@functools.cache
def _schema(version: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(_SCHEMA_DIR / f"CAP-v{version}.xsd")))


def parse_cap(data: bytes, *, max_bytes: int = 1_048_576) -> CapAlert:
    """Parse and validate one CAP 1.2 (or 1.1) message."""
    if len(data) > max_bytes:
        raise CapError(f"message is {len(data)} bytes; the limit is {max_bytes}",
                       rule="too-large")
    if not data.strip():
        raise CapError("empty body", rule="xml-syntax")
    try:
        SafeET.fromstring(data, forbid_dtd=True)
    except DTDForbidden as exc:
        raise CapError("DTDs are not allowed in CAP", rule="dtd-forbidden") from exc
    except EntitiesForbidden as exc:
        raise CapError("entity declarations are not allowed", rule="entity-forbidden") from exc
    except DefusedXmlException as exc:
        raise CapError(f"unsafe XML: {exc}", rule="entity-forbidden") from exc
    except (ParseError, ValueError) as exc:
        raise CapError(f"not well-formed XML: {exc}", rule="xml-syntax") from exc
    except LookupError as exc:  # <?xml encoding="..."?> names a codec Python does not know
        raise CapError(f"not readable XML: {exc}", rule="xml-syntax") from exc
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise CapError(f"not well-formed XML: {exc}", rule="xml-syntax") from exc
    qname = etree.QName(root)
    version = NAMESPACES.get(qname.namespace or "")
    if qname.localname != "alert" or version is None:
        raise CapError(f"root element is {{{qname.namespace}}}{qname.localname}, not a CAP "
                       f"1.2 or 1.1 <alert>", rule="not-cap", element=qname.localname)
    schema = _schema(version)
    if not schema.validate(root):
        err = list(schema.error_log)[-1]
        raise CapError(f"line {err.line}: {err.message}", rule="schema",
                       element=_element_path(root, err.line))
    alert = _build(root, data, version)
    _check_rules(alert)
    return alert


def _element_path(root: etree._Element, line: int) -> str:
    """``alert/info[1]/area[2]``: the element where the schema error was found."""
    found, found_line = root, -1
    for node in root.iter():
        at = cast("int | None", node.sourceline)
        # The first element starting on the error's line (or the last one before it).
        if isinstance(node.tag, str) and at is not None and found_line < at <= line:
            found, found_line = node, at
    steps = []
    current: etree._Element | None = found
    while current is not None:
        name = etree.QName(current).localname
        parent = current.getparent()
        if parent is not None:
            siblings = parent.findall(current.tag)
            if len(siblings) > 1:
                name += f"[{siblings.index(current) + 1}]"
        steps.append(name)
        current = parent
    return "/".join(reversed(steps))


class _Reader:
    def __init__(self, ns: str) -> None:
        self.ns = "{" + ns + "}"

    def text(self, el: etree._Element, name: str) -> str | None:
        v = el.findtext(self.ns + name)
        v = v.strip() if v is not None else None
        return v or None

    def texts(self, el: etree._Element, name: str) -> tuple[str, ...]:
        return tuple(t.strip() for c in el.findall(self.ns + name)
                     if (t := c.text) and t.strip())

    def pairs(self, el: etree._Element, name: str) -> tuple[Pair, ...]:
        return tuple(((self.text(c, "valueName") or ""), (self.text(c, "value") or ""))
                     for c in el.findall(self.ns + name))


def _time(text: str | None, element: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CapError(f"{text!r} is not a date-time", rule="date-time",
                       element=element) from None
    if value.tzinfo is None:
        raise CapError(f"{text!r} has no time zone", rule="date-time", element=element)
    return value


def _points(text: str, element: str) -> tuple[Point, ...]:
    try:
        pts = tuple((float(p.split(",")[0]), float(p.split(",")[1])) for p in text.split())
    except (ValueError, IndexError):
        raise CapError(f"bad coordinates {text[:80]!r}", rule="geometry",
                       element=element) from None
    return pts


def _build(root: etree._Element, raw: bytes, version: str) -> CapAlert:
    r = _Reader(etree.QName(root).namespace or "")
    sent_text = r.text(root, "sent") or ""
    sent = _time(sent_text, "alert/sent")
    assert sent is not None  # the schema requires it
    refs: list[CapRef] = []
    for token in (r.text(root, "references") or "").split():
        parts = token.split(",")
        if len(parts) != 3:
            raise CapError(f"reference {token!r} is not sender,identifier,sent",
                           rule="references-format", element="alert/references")
        refs.append(CapRef(*parts))
    infos: list[CapInfo] = []
    for i, el in enumerate(root.findall(r.ns + "info"), start=1):
        where = f"alert/info[{i}]"
        areas = []
        for j, a in enumerate(el.findall(r.ns + "area"), start=1):
            aw = f"{where}/area[{j}]"
            polygons = tuple(_points(p, f"{aw}/polygon") for p in r.texts(a, "polygon"))
            circles = []
            for c in r.texts(a, "circle"):
                centre, _, radius = c.rpartition(" ")
                pts = _points(centre, f"{aw}/circle")
                try:
                    circles.append((pts[0], float(radius)))
                except (ValueError, IndexError):
                    raise CapError(f"bad circle {c!r}", rule="geometry",
                                   element=f"{aw}/circle") from None
            alt, ceil = r.text(a, "altitude"), r.text(a, "ceiling")
            areas.append(CapArea(
                area_desc=r.text(a, "areaDesc") or "", polygons=polygons,
                circles=tuple(circles), geocodes=r.pairs(a, "geocode"),
                altitude=float(alt) if alt else None, ceiling=float(ceil) if ceil else None))
        resources = []
        for res in el.findall(r.ns + "resource"):
            size = r.text(res, "size")
            resources.append(CapResource(
                resource_desc=r.text(res, "resourceDesc") or "",
                mime_type=r.text(res, "mimeType"), size=int(size) if size else None,
                uri=r.text(res, "uri"), digest=r.text(res, "digest")))
        infos.append(CapInfo(
            language=r.text(el, "language") or "en-US",
            categories=r.texts(el, "category"), event=r.text(el, "event") or "",
            response_types=r.texts(el, "responseType"),
            urgency=r.text(el, "urgency") or "Unknown",
            severity=r.text(el, "severity") or "Unknown",
            certainty=r.text(el, "certainty") or "Unknown",
            audience=r.text(el, "audience"), event_codes=r.pairs(el, "eventCode"),
            effective=_time(r.text(el, "effective"), f"{where}/effective"),
            onset=_time(r.text(el, "onset"), f"{where}/onset"),
            expires=_time(r.text(el, "expires"), f"{where}/expires"),
            sender_name=r.text(el, "senderName"), headline=r.text(el, "headline"),
            description=r.text(el, "description"), instruction=r.text(el, "instruction"),
            web=r.text(el, "web"), contact=r.text(el, "contact"),
            parameters=r.pairs(el, "parameter"), resources=tuple(resources),
            areas=tuple(areas)))
    return CapAlert(
        raw=raw, version=version, identifier=r.text(root, "identifier") or "",
        sender=r.text(root, "sender") or "", sent=sent, sent_text=sent_text,
        status=r.text(root, "status") or "", msg_type=r.text(root, "msgType") or "",
        scope=r.text(root, "scope") or "", source=r.text(root, "source"),
        restriction=r.text(root, "restriction"), note=r.text(root, "note"),
        references=tuple(refs), incidents=tuple((r.text(root, "incidents") or "").split()),
        infos=tuple(infos), signed=root.find(_DSIG) is not None)


def _check_rules(cap: CapAlert) -> None:
    """CAP 1.2 §3.2 rules beyond the schema."""
    if cap.msg_type in ("Update", "Cancel", "Ack", "Error") and not cap.references:
        raise CapError(f"msgType {cap.msg_type} must name the message(s) it refers to",
                       rule="references-required", element="alert/references")
    # CAP 1.1 publishers send header-only messages (e.g. USGS); 1.2 profiles require info.
    if cap.version == "1.2" and cap.msg_type in ("Alert", "Update") and not cap.infos:
        raise CapError(f"msgType {cap.msg_type} needs at least one <info>",
                       rule="info-required", element="alert/info")
    for i, info in enumerate(cap.infos, start=1):
        if info.expires is not None and info.expires <= cap.sent:
            raise CapError(f"expires {info.expires.isoformat()} is not after sent "
                           f"{cap.sent.isoformat()}", rule="expires-before-sent",
                           element=f"alert/info[{i}]/expires")
        for j, area in enumerate(info.areas, start=1):
            for poly in area.polygons:
                if len(poly) < 4 or poly[0] != poly[-1]:
                    raise CapError("a polygon needs 4 or more points, first equal to last",
                                   rule="polygon-closed",
                                   element=f"alert/info[{i}]/area[{j}]/polygon")
            for pt in [p for poly in area.polygons for p in poly] + [
                    c[0] for c in area.circles]:
                if not (-90 <= pt[0] <= 90 and -180 <= pt[1] <= 180):
                    raise CapError(f"coordinate {pt} is outside WGS 84", rule="geometry",
                                   element=f"alert/info[{i}]/area[{j}]")


@dataclass(frozen=True, slots=True)
class Result:
    path: Path
    ok: bool
    reason: str | None = None
    cap: CapAlert | None = None


def validate_files(paths: list[Path] | tuple[Path, ...]) -> Iterator[Result]:
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield Result(path, False, f"cannot read: {exc.strerror}")
            continue
        try:
            yield Result(path, True, cap=parse_cap(data, max_bytes=max(len(data), 1)))
        except CapError as exc:
            yield Result(path, False, str(exc))
