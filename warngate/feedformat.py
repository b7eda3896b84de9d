"""Feed documents → entries: ATOM and RSS (0.9x, 1.0/RDF, 2.0) indexes of CAP, EDXL-DE
envelopes and bare CAP messages.

An entry either carries its CAP message (ATOM ``content``, an EDXL-DE ``contentObject``, a
bare CAP URL) or links to it. An entry that does neither, and a CAP message found outside
any entry, come back with a ``problem`` so that the poller keeps them as rejected input
instead of passing over them in silence.

Embedded messages are cut out with lxml, which keeps the sender's namespace prefixes, so the
raw CAP kept with an alert reads as the sender wrote it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET
from lxml import etree

_CAP_NAMESPACES = frozenset((
    "urn:oasis:names:tc:emergency:cap:1.2",
    "urn:oasis:names:tc:emergency:cap:1.1",
))
# The same guarantees as warngate.cap.parse: no DTDs, entities or network.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=True, remove_pis=True)

Kind = Literal["auto", "atom", "rss", "cap"]
_BY_ROOT: dict[str, Kind] = {"feed": "atom", "rss": "rss", "RDF": "rss"}


class FeedFormatError(Exception):
    """The document is not safe, well-formed ATOM, RSS, EDXL-DE or CAP."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    url: str | None = None
    #: A CAP message carried inside the entry itself.
    embedded: bytes | None = None
    #: Why the entry cannot be used (kept as rejected input with ``body``).
    problem: str | None = None
    body: bytes | None = None


def read_entries(body: bytes, feed_url: str, kind: Kind = "auto") -> list[Entry]:
    """Every entry of a feed document, in document order."""
    try:
        SafeET.fromstring(body, forbid_dtd=True)
        root = etree.fromstring(body, _PARSER)
    except (DefusedXmlException, SafeET.ParseError, etree.XMLSyntaxError, ValueError,
            LookupError) as exc:
        raise FeedFormatError(f"feed is not well-formed, safe XML: {exc}") from exc
    if kind == "auto":
        kind = _BY_ROOT.get(_local(root), "cap")
    if kind == "cap":
        return list(_envelope(root, body, feed_url))
    return list(_atom(root, feed_url) if kind == "atom" else _rss(root, feed_url))


def _local(el: Any) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _is_cap(el: Any) -> bool:
    return _local(el) == "alert" and etree.QName(el).namespace in _CAP_NAMESPACES


def _caps(el: Any) -> list[Any]:
    """CAP alerts inside ``el``, outermost only (a CAP never nests another)."""
    return [n for n in el.iter() if isinstance(n.tag, str) and _is_cap(n)
            and not any(_is_cap(a) for a in n.iterancestors())]


def _child(el: Any, name: str) -> Any | None:
    return next((c for c in el if _local(c) == name), None)


def _text(el: Any, name: str) -> str:
    c = _child(el, name)
    return (c.text or "").strip() if c is not None else ""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _xml(el: Any) -> bytes:
    return bytes(etree.tostring(el, encoding="utf-8", with_tail=False))


def _envelope(root: Any, body: bytes, feed_url: str) -> Iterator[Entry]:
    # A bare CAP URL is its own single entry; an EDXL-DE envelope gives one per message.
    if _is_cap(root):
        yield Entry(key=_digest(body), url=feed_url, embedded=body)
        return
    caps = _caps(root)
    if not caps:
        raise FeedFormatError(f"document <{_local(root)}> is neither ATOM, RSS nor CAP")
    for cap in caps:
        data = _xml(cap)
        yield Entry(key=_digest(data), url=feed_url, embedded=data)


def _item(el: Any, key: str, href: str | None) -> Entry:
    caps = _caps(el)
    if caps:
        data = _xml(caps[0])
        return Entry(key=key or _digest(data), url=href, embedded=data)
    if href:
        return Entry(key=key or href, url=href)
    data = _xml(el)
    return Entry(key=key or _digest(data), body=data,
                 problem="entry has neither a link nor an embedded CAP message")


def _atom(root: Any, feed_url: str) -> Iterator[Entry]:
    entries = [e for e in root if _local(e) == "entry"]
    for e in entries:
        ident, updated = _text(e, "id"), _text(e, "updated")
        href = None
        for link in (c for c in e if _local(c) == "link"):
            h = link.get("href")
            if not h:
                continue
            rel, typ = link.get("rel", "alternate"), link.get("type", "")
            if "cap" in typ or (href is None and rel in ("alternate", "enclosure")):
                href = urljoin(feed_url, h)
        yield _item(e, f"{ident or href or ''}@{updated}" if (ident or href) else "", href)
    yield from _strays(root)


def _rss(root: Any, feed_url: str) -> Iterator[Entry]:
    items = [i for i in root.iter() if isinstance(i.tag, str) and _local(i) == "item"]
    for item in items:
        target = _text(item, "link")
        enclosure = _child(item, "enclosure")
        if enclosure is not None and enclosure.get("url"):
            target = enclosure.get("url") or target
        yield _item(item, _text(item, "guid"), urljoin(feed_url, target) if target else None)
    yield from _strays(root)


def _strays(root: Any) -> Iterator[Entry]:
    """CAP messages outside every entry: foreign markup, flagged rather than acted on."""
    for cap in _caps(root):
        if not any(_local(a) in ("entry", "item") for a in cap.iterancestors()):
            data = _xml(cap)
            yield Entry(key=_digest(data), body=data,
                        problem="CAP message outside any feed entry: not taken")
