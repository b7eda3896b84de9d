"""Feed documents → entries, on our own small documents (any machine) and on every feed
document of ../shared/data/cap/feeds (real ATOM, RSS and EDXL-DE from several services)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from warngate.cap import CapError, parse_cap
from warngate.feedformat import Entry, FeedFormatError, read_entries

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"
FEEDS = Path(__file__).resolve().parents[3] / "shared" / "data" / "cap" / "feeds"
URL = "https://met.example.cn/feeds/index.xml"

CAP = (FIXTURES / "red-rainstorm-zh-en.xml").read_bytes().split(b"?>", 1)[1].decode()
# The same message written as NSW RFS writes theirs: every element with a cap: prefix.
_NS = "urn:oasis:names:tc:emergency:cap:1.2"
PREFIXED = re.sub(r"<(/?)(\w+)", r"<\1cap:\2", CAP).replace(f'xmlns="{_NS}"', f'xmlns:cap="{_NS}"')


def outcomes(entries: list[Entry]) -> tuple[int, int, int, int]:
    """(links to fetch, embedded CAP accepted, embedded CAP refused, entries with a problem)"""
    ok = refused = 0
    for e in entries:
        if e.embedded is not None:
            try:
                parse_cap(e.embedded)
                ok += 1
            except CapError:
                refused += 1
    links = sum(1 for e in entries if e.embedded is None and e.url and e.problem is None)
    return links, ok, refused, sum(1 for e in entries if e.problem)


def test_atom_index_links_resolve_against_the_feed() -> None:
    doc = f"""<feed xmlns="http://www.w3.org/2005/Atom"><title>气象台</title>
      <entry><id>urn:a</id><updated>2026-07-01T08:00:00+08:00</updated>
        <link rel="alternate" type="text/html" href="/html/a"/>
        <link rel="alternate" type="application/cap+xml" href="cap/a.xml"/></entry>
      <entry><id>urn:b</id><updated>2026-07-01T09:00:00+08:00</updated>
        <content type="text/xml">{CAP}</content></entry>
    </feed>""".encode()
    a, b = read_entries(doc, URL)
    assert (a.key, a.url, a.embedded) == ("urn:a@2026-07-01T08:00:00+08:00",
                                          "https://met.example.cn/feeds/cap/a.xml", None)
    assert b.key == "urn:b@2026-07-01T09:00:00+08:00"
    assert b.embedded is not None and parse_cap(b.embedded).identifier


def test_rss_2_and_rss_1_items() -> None:
    rss2 = b"""<rss version="2.0"><channel><title>t</title>
      <item><guid>g1</guid><link>/cap/1.xml</link></item>
      <item><guid>g2</guid><enclosure url="https://x.cn/2.xml" type="application/cap+xml"/>
      </item></channel></rss>"""
    assert [(e.key, e.url) for e in read_entries(rss2, URL)] == [
        ("g1", "https://met.example.cn/cap/1.xml"), ("g2", "https://x.cn/2.xml")]
    rdf = b"""<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
                       xmlns="http://purl.org/rss/1.0/">
      <channel><title>t</title></channel>
      <item><link>https://x.cn/3.xml</link></item></rdf:RDF>"""
    assert [e.url for e in read_entries(rdf, URL)] == ["https://x.cn/3.xml"]


def test_every_message_of_an_edxl_envelope_is_an_entry_with_its_prefixes() -> None:
    broken = '<cap:alert xmlns:cap="urn:oasis:names:tc:emergency:cap:1.2"></cap:alert>'
    other = PREFIXED.replace("<cap:identifier>", "<cap:identifier>2-", 1)
    doc = f"""<EDXLDistribution xmlns="urn:oasis:names:tc:emergency:EDXL:DE:1.0">
      <contentObject><xmlContent><embeddedXMLContent>{PREFIXED}</embeddedXMLContent>
      </xmlContent></contentObject>
      <contentObject><xmlContent><embeddedXMLContent>{broken}</embeddedXMLContent>
      </xmlContent></contentObject>
      <contentObject><xmlContent><embeddedXMLContent>{other}</embeddedXMLContent>
      </xmlContent></contentObject></EDXLDistribution>""".encode()
    entries = read_entries(doc, URL)
    assert outcomes(entries) == (0, 2, 1, 0)
    assert len({e.key for e in entries}) == 3
    first = entries[0].embedded
    assert first is not None and first.startswith(b"<cap:alert") and first.endswith(b"alert>")


def test_a_bare_cap_document_is_its_own_entry() -> None:
    body = (FIXTURES / "red-rainstorm-zh-en.xml").read_bytes()
    [entry] = read_entries(body, URL)
    assert (entry.url, entry.embedded) == (URL, body)


def test_unusable_entries_and_stray_messages_come_back_with_a_problem() -> None:
    doc = f"""<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
      <entry><title>空条目</title><content></content></entry>
      {CAP}</feed>""".encode()
    empty, stray = read_entries(doc, URL)
    assert empty.problem == "entry has neither a link nor an embedded CAP message"
    assert stray.problem == "CAP message outside any feed entry: not taken"
    assert empty.body and "空条目".encode() in empty.body and stray.body


@pytest.mark.parametrize("doc", [
    b"",
    b"<feed",
    b'<?xml version="1.0" encoding="AUTF-8"?><feed/>',
    b'<!DOCTYPE feed [<!ENTITY x "y">]><feed>&x;</feed>',
    b"<html><body>not a feed</body></html>",
])
def test_documents_that_are_not_safe_feeds_are_refused(doc: bytes) -> None:
    with pytest.raises(FeedFormatError):
        read_entries(doc, URL)


# -- the real feed documents in ../shared ---------------------------------------------------

# file: (links to fetch, embedded accepted, embedded refused, entries with a problem)
SHARED_FEEDS = {
    "au-bushfire-edxlde-7-alerts.edxlde": (0, 7, 0, 0),
    "au-sa-cfs-alert-outside-entry.atom": (0, 0, 0, 1),
    "ca-ec-signed-atom-embedded.atom": (0, 1, 0, 0),
    "fr-meteoalarm-france.atom": (12, 0, 0, 0),
    "gb-meteoalarm-uk.atom": (25, 0, 0, 0),
    "mx-smn-atom-index-625-entries.atom": (625, 0, 0, 0),
    "se-krisinformation-cap-index.atom": (4, 0, 0, 0),
    "tz-tma-rss.xml": (2, 0, 0, 0),
    "us-amber-atom-embedded.atom": (0, 1, 0, 0),
    "us-amber.rss": (1, 0, 0, 0),
    "us-nws-cap11-atom-index-2014.atom": (2, 0, 0, 0),
    "us-nws-cap11-atom-index.atom": (2, 0, 0, 0),
    "us-nws-cap11-atom-with-embedded-alert.atom": (0, 1, 0, 0),
    "us-nws-empty-index.atom": (0, 0, 0, 0),
    "us-ny-alert-index.rss": (2, 0, 0, 0),
    "us-trinet-earthquake-embedded.atom": (0, 1, 0, 0),
    "us-usgs-alerthub-earthquakes.atom": (1, 0, 0, 0),
    "us-usgs-earthquake-index.atom": (1, 0, 0, 0),
    # Broken documents: whatever is usable is taken, the rest flagged or refused.
    "invalid/au-bushfire-edxlde-invalid.edxlde": (0, 5, 2, 0),
    "invalid/us-nws-oregon-atom-hybrid-alert.atom": (0, 0, 1, 0),
    "invalid/synthetic-atom-invalid-element.atom": (0, 0, 0, 1),
    "invalid/synthetic-rss-missing-title.rss": (0, 0, 0, 1),
    "invalid/us-nws-atom-missing-id.atom": (0, 0, 0, 1),
    "invalid/us-nws-atom-missing-title.atom": (0, 0, 0, 1),
}
needs_shared = pytest.mark.skipif(not FEEDS.is_dir(),
                                  reason=f"real feed samples not found at {FEEDS}")


@needs_shared
def test_every_shared_feed_document_is_listed_here() -> None:
    present = {str(p.relative_to(FEEDS)) for p in FEEDS.rglob("*") if p.is_file()}
    assert present == set(SHARED_FEEDS)


@needs_shared
@pytest.mark.parametrize(("name", "expected"), SHARED_FEEDS.items(), ids=list(SHARED_FEEDS))
def test_real_feed_documents(name: str, expected: tuple[int, int, int, int]) -> None:
    entries = read_entries((FEEDS / name).read_bytes(), URL)
    assert outcomes(entries) == expected
    assert len({e.key for e in entries}) == len(entries)  # each entry fetched once
