"""Safe CAP parsing, once: one hardened lxml parser (no DTD, no entities, no network, a size
limit), the OASIS schema, then the rules the schema cannot express.

Leniency: refuse only what cannot be understood safely; a flaw that leaves the meaning
intact is accepted, the flawed part ignored or mended, and a ``CapWarning`` kept with the
alert (docs/feeds.md, "Leniency"). Every refusal is a ``CapError`` naming the rule and the
element."""

from __future__ import annotations

import codecs
import functools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast

from lxml import etree

from warngate.cap.levels import severity_known, stated_colour, unreadable_levels
from warngate.cap.model import (
    CapAlert,
    CapArea,
    CapError,
    CapInfo,
    CapRef,
    CapResource,
    CapWarning,
    Pair,
    Point,
)
from warngate.cap.rings import encloses_no_area, ring_problem

NAMESPACES = {
    "urn:oasis:names:tc:emergency:cap:1.2": "1.2",
    "urn:oasis:names:tc:emergency:cap:1.1": "1.1",
}
_DSIG = "{http://www.w3.org/2000/09/xmldsig#}Signature"
_SCHEMA_DIR = Path(__file__).parent / "schema"
# The one parse: entities are never expanded (not even internal ones: no billion laughs),
# nothing is fetched, no DTD is loaded, libxml2's depth and text-size limits stay on
# (huge_tree=False). A document that declares a DTD at all is refused after parsing.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=True)
#: CAP 1.2 §3.2.1: identifier and sender contain no spaces, commas or restricted characters.
_BAD_ID_CHARS = re.compile(r"[\s,<&]")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


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
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        if _declares_dtd(data):  # e.g. libxml2 stopped a billion laughs in the DTD itself
            raise CapError(f"DTDs are not allowed in CAP ({exc})",
                           rule="dtd-forbidden") from exc
        raise CapError(f"not well-formed XML: {exc}", rule="xml-syntax") from exc
    except (ValueError, LookupError) as exc:  # e.g. an encoding libxml2 cannot read
        raise CapError(f"not readable XML: {exc}", rule="xml-syntax") from exc
    if root is None:
        raise CapError("no root element", rule="xml-syntax")
    docinfo = root.getroottree().docinfo
    # No entity was expanded and nothing loaded; a DTD (the only place entities are
    # declared) is refused, as CAP never needs one.
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise CapError("DTDs are not allowed in CAP", rule="dtd-forbidden")
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
    warnings: list[CapWarning] = []
    alert = _build(root, data, version, _encoding(data, docinfo.encoding), warnings)
    _check_rules(alert, warnings)
    return alert if not warnings else _with_warnings(alert, warnings)


_DOCTYPES = tuple("<!DOCTYPE".encode(codec) for codec in ("ascii", "utf-16-le", "utf-16-be"))


def _declares_dtd(data: bytes) -> bool:
    """Only names the rule of a document that failed to parse; the refusal stands anyway."""
    head = data[:8192]
    return any(d in head for d in _DOCTYPES)


def _with_warnings(alert: CapAlert, warnings: list[CapWarning]) -> CapAlert:
    import dataclasses

    return dataclasses.replace(alert, warnings=tuple(warnings))


def _encoding(data: bytes, declared: str | None) -> str:
    """The codec of the bytes as received: a byte-order mark wins over the declaration
    (libxml2 reports UTF-8 for an undeclared UTF-16 document with a BOM)."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec
    return (declared or "utf-8").lower()


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


_Kids = dict[str, list[etree._Element]]


def _kids(el: etree._Element, ns: str) -> _Kids:
    """Children by local name, in one pass (far cheaper than a find() per field)."""
    out: _Kids = {}
    cut = len(ns)
    for child in el:
        tag = child.tag
        if isinstance(tag, str) and tag.startswith(ns):
            out.setdefault(tag[cut:], []).append(child)
    return out


def _text(kids: _Kids, name: str) -> str | None:
    found = kids.get(name)
    if not found:
        return None
    v = found[0].text
    return (v.strip() or None) if v is not None else None


def _texts(kids: _Kids, name: str) -> tuple[str, ...]:
    return tuple(t.strip() for c in kids.get(name, ()) if (t := c.text) and t.strip())


def _pairs(kids: _Kids, name: str, ns: str) -> tuple[Pair, ...]:
    value_name, value = ns + "valueName", ns + "value"
    out = []
    for c in kids.get(name, ()):  # often dozens of geocodes: no _kids() for each
        n = v = None
        for g in c:
            if g.tag == value_name and n is None:
                n = (g.text or "").strip()
            elif g.tag == value and v is None:
                v = (g.text or "").strip()
        out.append((n or "", v or ""))
    return tuple(out)


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


Warn = Callable[[str, str, str], None]


def _point(token: str) -> Point:
    lat, lon = token.split(",", 2)[:2]
    return float(lat), float(lon)


def _in_range(pt: Point) -> bool:
    return -90 <= pt[0] <= 90 and -180 <= pt[1] <= 180


#: "lat,lon lat,lon ...": read in bulk (most of a big message's time went on its polygons).
_PAIRS = re.compile(r"\s*[^\s,]+,[^\s,]+(?:\s+[^\s,]+,[^\s,]+)*\s*")


def _coordinates(text: str) -> list[float]:
    """lat, lon, lat, lon, ... of a polygon; ValueError if they are not lat,lon pairs."""
    if _PAIRS.fullmatch(text):
        return list(map(float, text.replace(",", " ").split()))
    # Rare forms ("lat,lon,alt") and every error, one point at a time.
    return [x for pt in map(_point, text.split()) for x in pt]


#: Polygons read so far, with where they are: their rings are checked all at once.
_Rings = list[tuple[tuple[Point, ...], str, list[float]]]


def _polygon(text: str, where: str, warn: Warn, rings: _Rings) -> tuple[Point, ...] | None:
    """The polygon, mended where its meaning is plain; None (with a warning) if unusable.

    Whether its ring is simple is checked once the whole message is read (``_check_rings``),
    so those warnings follow the others, as they always have."""
    try:
        flat = _coordinates(text)
    except ValueError:
        warn("geometry", where, f"coordinates {text[:80]!r} are not lat,lon pairs; "
             f"polygon ignored")
        return None
    lats, lons = flat[0::2], flat[1::2]
    pts = tuple(zip(lats, lons, strict=True))
    # A NaN anywhere makes the sum NaN (and min/max would step over it).
    if (math.isnan(sum(lats) + sum(lons)) or min(lats) < -90 or max(lats) > 90
            or min(lons) < -180 or max(lons) > 180):
        bad = next(p for p in pts if not _in_range(p))
        warn("geometry", where, f"coordinate {bad} is outside WGS 84; polygon ignored")
        return None
    if len(set(pts)) < 3:
        warn("polygon-degenerate", where,
             f"{len(pts)} points, fewer than 3 distinct; polygon ignored")
        return None
    if pts[0] != pts[-1]:
        # Its outline is still plain: close it rather than lose the area.
        warn("polygon-closed", where, "first point is not the last; closed by warngate")
        pts = (*pts, pts[0])
        flat += flat[:2]
    rings.append((pts, where, flat))
    return pts


def _check_rings(rings: _Rings, warn: Warn) -> list[tuple[Point, ...]]:
    """Flag rings that cross themselves; return those that enclose no area (to drop)."""
    empty = []
    # A message in two languages repeats its areas: each distinct ring is checked once.
    seen: dict[tuple[float, ...], tuple[bool, str | None]] = {}
    for pts, where, flat in rings:
        key = tuple(flat)
        if (found := seen.get(key)) is None:
            lons, lats = flat[1::2], flat[0::2]
            if encloses_no_area(lons, lats):
                found = (True, None)
            else:
                found = (False, ring_problem(lons, lats))
            seen[key] = found
        no_area, problem = found
        if no_area:
            empty.append(pts)
        elif problem is not None:
            # Real services publish rings that touch or cross themselves (Met Éireann's
            # do); the area is still plain, and matching repairs the ring (geomatch.py).
            warn("polygon-self-intersecting", where, f"{problem}; used as repaired")
    for pts, where, _ in rings:
        if any(pts is e for e in empty):
            warn("polygon-degenerate", where, "the points enclose no area; polygon ignored")
    return empty


def _circle(text: str, where: str, warn: Warn) -> tuple[Point, float] | None:
    centre, _, radius = text.rpartition(" ")
    try:
        pt, r = _point(centre.strip()), float(radius)
    except ValueError:
        warn("geometry", where, f"circle {text[:80]!r} is not 'lat,lon radius'; ignored")
        return None
    if not _in_range(pt) or not r >= 0:
        warn("geometry", where, f"circle {text[:80]!r} is outside WGS 84 or has a "
             f"negative radius; ignored")
        return None
    return pt, r


def _area(a: etree._Element, ns: str, where: str, warn: Warn, rings: _Rings) -> CapArea:
    k = _kids(a, ns)
    polys = _texts(k, "polygon")
    polygons = tuple(p for i, text in enumerate(polys, start=1)
                     if (p := _polygon(text, _nth(f"{where}/polygon", i), warn, rings)))
    circs = _texts(k, "circle")
    circles = tuple(c for i, text in enumerate(circs, start=1)
                    if (c := _circle(text, _nth(f"{where}/circle", i), warn)))
    alt, ceil = _text(k, "altitude"), _text(k, "ceiling")
    return CapArea(area_desc=_text(k, "areaDesc") or "", polygons=polygons, circles=circles,
                   geocodes=_pairs(k, "geocode", ns),
                   altitude=float(alt) if alt else None, ceiling=float(ceil) if ceil else None)


def _nth(path: str, i: int) -> str:
    # Always numbered (``area[1]`` even when alone): one shape for whoever reads warnings.
    return f"{path}[{i}]"


def _build(root: etree._Element, raw: bytes, version: str, encoding: str,
           warnings: list[CapWarning]) -> CapAlert:
    def warn(rule: str, element: str, message: str) -> None:
        warnings.append(CapWarning(rule, element, message))

    rings: _Rings = []
    ns = "{" + (etree.QName(root).namespace or "") + "}"
    top = _kids(root, ns)
    sent_text = _text(top, "sent") or ""
    sent = _time(sent_text, "alert/sent")
    assert sent is not None  # the schema requires it
    refs: list[CapRef] = []
    for token in (_text(top, "references") or "").split():
        parts = token.split(",")
        if len(parts) != 3:
            raise CapError(f"reference {token!r} is not sender,identifier,sent",
                           rule="references-format", element="alert/references")
        refs.append(CapRef(*parts))
    infos: list[CapInfo] = []
    info_els = top.get("info", [])
    for i, el in enumerate(info_els, start=1):
        where = _nth("alert/info", i)
        k = _kids(el, ns)
        area_els = k.get("area", [])
        areas = tuple(_area(a, ns, _nth(f"{where}/area", j), warn, rings)
                      for j, a in enumerate(area_els, start=1))
        resources = []
        for res in k.get("resource", ()):
            rk = _kids(res, ns)
            size = _text(rk, "size")
            resources.append(CapResource(
                resource_desc=_text(rk, "resourceDesc") or "",
                mime_type=_text(rk, "mimeType"), size=int(size) if size else None,
                uri=_text(rk, "uri"), digest=_text(rk, "digest")))
        infos.append(CapInfo(
            language=_text(k, "language") or "en-US",
            categories=_texts(k, "category"), event=_text(k, "event") or "",
            response_types=_texts(k, "responseType"),
            urgency=_text(k, "urgency") or "Unknown",
            severity=_text(k, "severity") or "Unknown",
            certainty=_text(k, "certainty") or "Unknown",
            audience=_text(k, "audience"), event_codes=_pairs(k, "eventCode", ns),
            effective=_time(_text(k, "effective"), f"{where}/effective"),
            onset=_time(_text(k, "onset"), f"{where}/onset"),
            expires=_time(_text(k, "expires"), f"{where}/expires"),
            sender_name=_text(k, "senderName"), headline=_text(k, "headline"),
            description=_text(k, "description"), instruction=_text(k, "instruction"),
            web=_text(k, "web"), contact=_text(k, "contact"),
            parameters=_pairs(k, "parameter", ns), resources=tuple(resources),
            areas=areas))
    empty = _check_rings(rings, warn)
    if empty:
        infos = [_without(info, empty) for info in infos]
    return CapAlert(
        raw=raw, version=version, identifier=_text(top, "identifier") or "",
        sender=_text(top, "sender") or "", sent=sent, sent_text=sent_text,
        status=_text(top, "status") or "", msg_type=_text(top, "msgType") or "",
        scope=_text(top, "scope") or "", source=_text(top, "source"),
        restriction=_text(top, "restriction"), note=_text(top, "note"),
        references=tuple(refs), incidents=tuple((_text(top, "incidents") or "").split()),
        infos=tuple(infos), signed=root.find(_DSIG) is not None,
        encoding=encoding)


def _without(info: CapInfo, drop: list[tuple[Point, ...]]) -> CapInfo:
    import dataclasses

    areas = tuple(dataclasses.replace(a, polygons=tuple(
        p for p in a.polygons if not any(p is d for d in drop))) for a in info.areas)
    return dataclasses.replace(info, areas=areas)


def _check_rules(cap: CapAlert, warnings: list[CapWarning]) -> None:
    """CAP 1.2 §3.2 rules beyond the schema, and what we need to act on a message."""
    for name, value in (("identifier", cap.identifier), ("sender", cap.sender)):
        # A comma or space would make every <references> naming this message ambiguous.
        if _BAD_ID_CHARS.search(value):
            raise CapError(f"{name} {value[:80]!r} contains a space, comma, '<' or '&' "
                           f"(CAP 1.2 §3.2.1)", rule="identifier-chars",
                           element=f"alert/{name}")
    if cap.msg_type in ("Update", "Cancel", "Ack", "Error") and not cap.references:
        raise CapError(f"msgType {cap.msg_type} must name the message(s) it refers to",
                       rule="references-required", element="alert/references")
    # CAP 1.1 publishers send header-only messages (e.g. USGS); 1.2 profiles require info.
    if cap.version == "1.2" and cap.msg_type in ("Alert", "Update") and not cap.infos:
        raise CapError(f"msgType {cap.msg_type} needs at least one <info>",
                       rule="info-required", element="alert/info")
    for i, info in enumerate(cap.infos, start=1):
        where = _nth("alert/info", i)
        # No CAP rule forbids it: Updates and Cancels that end a warning carry it. Only a
        # new Alert that ends before it starts is odd (it is kept as expired on arrival).
        if (cap.msg_type == "Alert" and info.expires is not None
                and info.expires <= cap.sent):
            warnings.append(CapWarning(
                "expires-before-sent", f"{where}/expires",
                f"expires {info.expires.isoformat()} is not after sent "
                f"{cap.sent.isoformat()}"))
        for kind, pairs in (("eventCode", info.event_codes), ("parameter", info.parameters)):
            for name, value in pairs:
                if not name or (kind == "eventCode" and not value):
                    warnings.append(CapWarning(
                        f"{kind.lower()}-odd", f"{where}/{kind}",
                        f"{kind} {name!r}={value!r} has an empty name or value; ignored"))
        for name, value in unreadable_levels(info):
            warnings.append(CapWarning(
                "level-unmapped", where,
                f"level {name}={value!r} names no colour or grade we know"))
    _check_level(cap)
    _check_areas(cap, warnings)


def _check_level(cap: CapAlert) -> None:
    """The sender stated a level we cannot read and gave no severity: we cannot tell whom
    to warn (a red warning sent as blue misses the people the policy reaches at red)."""
    if cap.msg_type not in ("Alert", "Update") or not cap.infos:
        return
    stated_unreadable = any(unreadable_levels(info) for info in cap.infos)
    if (stated_unreadable and all(stated_colour(info) is None for info in cap.infos)
            and not any(severity_known(info) for info in cap.infos)):
        values = [v for info in cap.infos for _, v in unreadable_levels(info)]
        raise CapError(f"level {values[0][:40]!r} names no colour or grade we know and "
                       f"severity is Unknown", rule="level-unknown", element="alert/info")


#: Warnings for a polygon or circle left out (the others mend it and keep it).
_SHAPE_IGNORED = ("geometry", "polygon-degenerate")


def _check_areas(cap: CapAlert, warnings: list[CapWarning]) -> None:
    """Every place the sender named was flawed: we cannot tell where to warn."""
    if cap.msg_type not in ("Alert", "Update"):
        return
    ignored = [w for w in warnings if w.rule in _SHAPE_IGNORED]
    if not ignored:
        return
    usable = any(area.polygons or area.circles or any(v for _, v in area.geocodes)
                 for info in cap.infos for area in info.areas)
    if not usable:
        raise CapError(f"no area can be read: {ignored[0].message}", rule="area-unusable",
                       element=ignored[0].element)


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
