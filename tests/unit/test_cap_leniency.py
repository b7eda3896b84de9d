"""Lenient on what the world sends: generated CAP documents with one flaw each.

A flaw that leaves the warning's meaning intact is accepted, the flawed part ignored or
mended, and a warning kept; only what cannot be understood safely is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from warngate.cap import CapError, alert_level, parse_cap, region_codes, validate_files
from warngate.cap.areas import covering_prefix, normalise_region
from warngate.cli import main as cli_main
from warngate.sources import cap_to_alert

SENT = datetime.fromisoformat("2026-07-01T08:00:00+08:00")
SENDER = "339901@qxj.example.gov.cn"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "cap"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"


def square(lat: float, lon: float, d: float = 0.05) -> str:
    pts = [(lat, lon), (lat, lon + d), (lat + d, lon + d), (lat + d, lon), (lat, lon)]
    return " ".join(f"{a},{b}" for a, b in pts)


def area(desc: str = "夏溪县", *, polygons: Sequence[str] = (), circles: Sequence[str] = (),
         geocodes: Sequence[tuple[str, str]] = ()) -> str:
    return ("<area><areaDesc>" + desc + "</areaDesc>"
            + "".join(f"<polygon>{p}</polygon>" for p in polygons)
            + "".join(f"<circle>{c}</circle>" for c in circles)
            + "".join(f"<geocode><valueName>{n}</valueName><value>{v}</value></geocode>"
                      for n, v in geocodes)
            + "</area>")


def cap_doc(*, identifier: str = "QX-GEN-1", sender: str = SENDER, msg_type: str = "Alert",
            references: str | None = None, sent: datetime = SENT,
            expires: datetime | None = None, severity: str = "Severe",
            event_codes: Sequence[tuple[str, str]] = (("CMA-level", "红色"),),
            parameters: Sequence[tuple[str, str]] = (),
            areas: Sequence[str] = (area(geocodes=[("GB/T 2260", "339901001")]),),
            encoding: str = "UTF-8") -> bytes:
    """A CAP 1.2 message in Chinese, built from parts (our own, so any flaw is on purpose)."""
    expires = expires or sent + timedelta(hours=6)
    refs = f"<references>{references}</references>" if references else ""
    pairs = "".join(f"<eventCode><valueName>{n}</valueName><value>{v}</value></eventCode>"
                    for n, v in event_codes)
    params = "".join(f"<parameter><valueName>{n}</valueName><value>{v}</value></parameter>"
                     for n, v in parameters)
    xml = (f'<?xml version="1.0" encoding="{encoding}"?>\n'
           f'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">'
           f"<identifier>{identifier}</identifier><sender>{sender}</sender>"
           f"<sent>{sent.isoformat()}</sent><status>Actual</status>"
           f"<msgType>{msg_type}</msgType><scope>Public</scope>{refs}"
           f"<info><language>zh-CN</language><category>Met</category><event>暴雨</event>"
           f"<urgency>Immediate</urgency><severity>{severity}</severity>"
           f"<certainty>Likely</certainty>{pairs}<expires>{expires.isoformat()}</expires>"
           f"<headline>夏溪县气象台发布暴雨红色预警信号</headline>"
           f"<description>过去3小时降雨量已达100毫米以上。</description>{params}"
           + "".join(areas) + "</info></alert>")
    return xml.encode(encoding)


def rules(data: bytes) -> list[tuple[str, str]]:
    return [(w.rule, w.element) for w in parse_cap(data).warnings]


def refused(data: bytes) -> CapError:
    with pytest.raises(CapError) as err:
        parse_cap(data)
    return err.value


# -- item 4: expires <= sent ----------------------------------------------------------------

@pytest.mark.parametrize("msg_type", ["Update", "Cancel"])
@pytest.mark.parametrize("offset", [timedelta(0), -timedelta(minutes=1), -timedelta(days=3)])
def test_update_and_cancel_ending_a_warning_are_accepted(msg_type: str,
                                                         offset: timedelta) -> None:
    cap = parse_cap(cap_doc(msg_type=msg_type, expires=SENT + offset,
                            references=f"{SENDER},QX-GEN-0,2026-07-01T06:00:00+08:00"))
    assert cap.msg_type == msg_type and cap.references
    assert cap.warnings == ()  # that is how a warning is ended: nothing odd about it


def test_an_alert_ending_before_it_is_sent_is_accepted_and_flagged() -> None:
    assert rules(cap_doc(expires=SENT - timedelta(hours=1))) == [
        ("expires-before-sent", "alert/info[1]/expires")]
    assert parse_cap((FIXTURES / "expires-before-sent.xml").read_bytes()).warnings


# -- item 5: identifier and sender characters -----------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("identifier", "INVALID, "), ("identifier", "QX 2026 1"), ("identifier", "QX,1"),
    ("identifier", "QX&amp;1"), ("identifier", "QX&lt;1"), ("identifier", "QX\t1"),
    ("sender", "qxj example"), ("sender", "qxj,example"), ("sender", "a&amp;b"),
])
def test_identifier_and_sender_with_reserved_characters_are_refused(field: str,
                                                                    value: str) -> None:
    err = refused(cap_doc(**{field: value}))  # type: ignore[arg-type]
    assert (err.rule, err.element) == ("identifier-chars", f"alert/{field}")


def test_identifier_padding_is_not_a_flaw() -> None:
    cap = parse_cap(cap_doc(identifier="\n    QX-GEN-2\n  "))
    assert cap.identifier == "QX-GEN-2" and not cap.warnings


# -- item 6: one flawed area among good ones ------------------------------------------------

GOOD = area(polygons=[square(30.0, 120.0)])


@pytest.mark.parametrize(("polygon", "rule"), [
    ("30.0,120.0 30.1,120.1 30.0,120.0", "polygon-degenerate"),  # 2 distinct points
    ("30.0,120.0 30.0,120.0 30.0,120.0 30.0,120.0", "polygon-degenerate"),
    ("30.0,120.0 30.1,120.1 30.2,120.2 30.0,120.0", "polygon-degenerate"),  # on a line
    ("30.0,120.0 95.0,120.1 30.1,120.2 30.0,120.0", "geometry"),  # latitude 95
    ("30.0,120.0 30.0,190.0 30.1,120.2 30.0,120.0", "geometry"),  # longitude 190
    ("30.0,120.0 nan,120.1 30.1,120.2 30.0,120.0", "geometry"),
    ("30.0;120.0 30.1;120.1 30.2;120.0 30.0;120.0", "geometry"),  # not lat,lon pairs
    ("30.0,120.0 30.1 120.1 30.0,120.0", "geometry"),
])
def test_a_degenerate_polygon_beside_valid_areas_is_ignored_and_flagged(
        polygon: str, rule: str) -> None:
    bad = area("白沙街道", polygons=[polygon])
    for areas, where in (((GOOD, bad), "alert/info[1]/area[2]/polygon[1]"),
                         ((area(polygons=[square(30.0, 120.0), polygon]),),
                          "alert/info[1]/area[1]/polygon[2]")):
        cap = parse_cap(cap_doc(areas=areas))
        assert [(w.rule, w.element) for w in cap.warnings] == [(rule, where)]
        kept = [p for a in cap.infos[0].areas for p in a.polygons]
        assert len(kept) == 1 and kept[0][0] == (30.0, 120.0)


def test_an_unclosed_polygon_is_closed_and_flagged() -> None:
    open_ring = "30.0,120.0 30.0,120.1 30.1,120.1 30.1,120.0"
    cap = parse_cap(cap_doc(areas=[area(polygons=[open_ring])]))
    [poly] = cap.infos[0].areas[0].polygons
    assert poly[0] == poly[-1] and len(poly) == 5
    assert [w.rule for w in cap.warnings] == ["polygon-closed"]


def test_a_self_intersecting_polygon_is_kept_and_flagged() -> None:
    bow_tie = "30.0,120.0 30.1,120.1 30.1,120.0 30.0,120.1 30.0,120.0"
    cap = parse_cap(cap_doc(areas=[GOOD, area(polygons=[bow_tie])]))
    assert len(cap.infos[0].areas[1].polygons) == 1
    [w] = cap.warnings
    assert (w.rule, w.element) == ("polygon-self-intersecting",
                                   "alert/info[1]/area[2]/polygon[1]")


@pytest.mark.parametrize("circle", ["30.0,120.0", "30.0,120.0 x", "95.0,120.0 5",
                                    "30.0,120.0 -5", "30.0 120.0 5"])
def test_a_flawed_circle_beside_valid_areas_is_ignored_and_flagged(circle: str) -> None:
    cap = parse_cap(cap_doc(areas=[GOOD, area(circles=[circle])]))
    assert [(w.rule, w.element) for w in cap.warnings] == [
        ("geometry", "alert/info[1]/area[2]/circle[1]")]
    assert cap.infos[0].areas[1].circles == ()


def test_a_message_whose_every_area_is_flawed_is_refused() -> None:
    flawed = area(polygons=["30.0,120.0 30.1,120.1 30.0,120.0"], circles=["95,120 5"])
    err = refused(cap_doc(areas=[flawed]))
    assert (err.rule, err.element) == ("area-unusable", "alert/info[1]/area[1]/polygon[1]")
    # A geocode beside the flawed shapes still says where: accepted.
    ok = area(polygons=["30.0,120.0 30.1,120.1 30.0,120.0"],
              geocodes=[("GB/T 2260", "339901001")])
    assert rules(cap_doc(areas=[ok])) == [("polygon-degenerate",
                                           "alert/info[1]/area[1]/polygon[1]")]
    # A Cancel only lifts what it names: its areas do not matter.
    cancel = parse_cap(cap_doc(msg_type="Cancel", areas=[flawed],
                               references=f"{SENDER},QX-GEN-0,2026-07-01T06:00:00+08:00"))
    assert cancel.msg_type == "Cancel" and len(cancel.warnings) == 2


def test_odd_event_codes_and_unnamed_parameters_are_accepted_with_a_warning() -> None:
    data = cap_doc(event_codes=[("CMA-level", "红色"), ("SAME", ""), ("", "RAIN")],
                   parameters=[("", "something"), ("WMOHEADER", "")])
    assert rules(data) == [("eventcode-odd", "alert/info[1]/eventCode"),
                           ("eventcode-odd", "alert/info[1]/eventCode"),
                           ("parameter-odd", "alert/info[1]/parameter")]
    assert alert_level(parse_cap(data)) == "red"


def test_an_unknown_level_falls_back_to_severity_with_a_warning() -> None:
    data = cap_doc(event_codes=[("CMA-level", "紫色")], severity="Severe")
    assert rules(data) == [("level-unmapped", "alert/info[1]")]
    assert alert_level(parse_cap(data)) == "orange"


def test_an_unknown_level_without_severity_is_refused() -> None:
    err = refused(cap_doc(event_codes=[("CMA-level", "紫色")], severity="Unknown"))
    assert err.rule == "level-unknown"


@pytest.mark.parametrize(("value", "level"), [
    ("Ⅰ级", "red"), ("I级", "red"), ("特别严重", "red"), ("Ⅱ级", "orange"), ("II级", "orange"),
    ("严重", "orange"), ("Ⅲ级", "yellow"), ("III级", "yellow"), ("较重", "yellow"),
    ("Ⅳ级", "blue"), ("IV级", "blue"), ("一般", "blue"), ("Yellow", "yellow"),
])
def test_national_grades_name_a_level(value: str, level: str) -> None:
    cap = parse_cap(cap_doc(event_codes=[("预警级别", value)], severity="Unknown"))
    assert alert_level(cap) == level and not cap.warnings


def test_grades_count_only_where_the_name_says_level() -> None:
    cap = parse_cap(cap_doc(event_codes=[("事件类型", "一般")], severity="Minor",
                            parameters=[("备注", "Ⅰ级响应")]))
    assert alert_level(cap) == "blue" and not cap.warnings


# -- item 9: region codes -------------------------------------------------------------------

@pytest.mark.parametrize(("code", "want"), [
    ("339901", "339901"), ("339901000", "339901"), ("339901000000", "339901"),
    ("339901001", "339901001"), ("339901001000", "339901001"),
    ("339901001002", "339901001002"), ("339901001002000", "339901001002"),
    ("339901001002003", "339901001002003"), ("339901000000000", "339901"),
    ("130602000000", "130602"), ("130600000000", "130600"), (" 339901001000 ", "339901001"),
])
def test_padded_national_codes_are_normalised(code: str, want: str) -> None:
    assert normalise_region(code) == want
    cap = parse_cap(cap_doc(areas=[area(geocodes=[("统计用区划代码", code)])]))
    assert region_codes(cap) == [want]


def test_province_and_prefecture_codes_cover_their_counties() -> None:
    assert covering_prefix("130600") == "1306"
    assert covering_prefix("130000") == "13"
    assert covering_prefix("130602") is None
    assert covering_prefix("339901001") is None
    assert covering_prefix("000000") is None


def test_the_same_place_written_twice_is_one_area() -> None:
    cap = parse_cap(cap_doc(areas=[area(geocodes=[("GB/T 2260", "339901001"),
                                                  ("CPEAS", "339901001000"),
                                                  ("CPEAS", "339901000000")])]))
    assert region_codes(cap) == ["339901001", "339901"]


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real CAP samples not found at {SHARED}")
def test_the_cma_sample_names_its_county() -> None:
    cap = parse_cap((SHARED / "valid" / "cn-cma-baoding-lightning-yellow-update.xml")
                    .read_bytes())
    assert region_codes(cap) == ["130602"]  # 新市区, written 130602000000


# -- item 7: the bytes as received ----------------------------------------------------------

@pytest.mark.parametrize("encoding", ["GB18030", "GBK", "UTF-16", "UTF-8"])
def test_raw_bytes_are_kept_exactly_and_read_in_their_encoding(encoding: str) -> None:
    data = cap_doc(encoding=encoding)
    cap = parse_cap(data)
    assert cap.infos[0].headline == "夏溪县气象台发布暴雨红色预警信号"
    new = cap_to_alert(cap, actor="feed")
    assert new.raw_bytes == data
    assert new.raw is not None and "过去3小时降雨量已达100毫米以上" in new.raw
    assert "\x00" not in new.raw and "\ufffd" not in new.raw


def test_utf16_without_a_declaration_is_read_by_its_byte_order_mark() -> None:
    text = cap_doc().decode().split("\n", 1)[1]  # no <?xml ...?>
    for codec in ("utf-16", "utf-16-be"):
        data = (b"\xfe\xff" if codec == "utf-16-be" else b"") + text.encode(codec)
        new = cap_to_alert(parse_cap(data), actor="feed")
        assert new.raw_bytes == data and new.raw == text


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real CAP samples not found at {SHARED}")
def test_a_shared_sample_re_encoded_in_gb18030_is_the_same_message() -> None:
    utf8 = (SHARED / "valid" / "cn-cma-baoding-lightning-yellow-update.xml").read_bytes()
    gb = utf8.decode().replace('encoding="UTF-8"', 'encoding="GB18030"').encode("gb18030")
    a, b = parse_cap(utf8), parse_cap(gb)
    assert a.infos == b.infos and b.raw == gb
    assert cap_to_alert(b, actor="feed").raw == gb.decode("gb18030")


# -- item 15: one hardened parse ------------------------------------------------------------

@pytest.mark.parametrize("doc", [
    # External entity, internal entity, external parameter entity, external DTD, plain DTD.
    b'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&x;</identifier></alert>',
    b'<!DOCTYPE alert [<!ENTITY x "QX">]>'
    b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&x;</identifier></alert>',
    b'<!DOCTYPE alert [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
    b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>',
    b'<!DOCTYPE alert SYSTEM "http://127.0.0.1:9/cap.dtd">'
    b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>',
    b"<!DOCTYPE alert><alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'/>",
])
def test_any_dtd_is_refused(doc: bytes) -> None:
    for data in (doc, doc.decode().encode("utf-16")):
        err = refused(data)
        assert err.rule == "dtd-forbidden", err
        assert "root:" not in str(err)  # nothing of /etc/passwd in the answer


def test_billion_laughs_is_refused_quickly() -> None:
    lol = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 12)]
    doc = (f'<?xml version="1.0"?><!DOCTYPE alert [{"".join(lol)}]>'
           f'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">'
           f"<identifier>&lol11;</identifier></alert>").encode()
    assert refused(doc).rule == "dtd-forbidden"
    assert refused((FIXTURES / "billion-laughs.xml").read_bytes()).rule == "dtd-forbidden"


def test_deep_nesting_and_huge_documents_are_refused_not_a_crash() -> None:
    deep = b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'>" + b"<a>" * 100_000 \
        + b"</a>" * 100_000 + b"</alert>"
    assert refused(deep).rule == "xml-syntax"
    with pytest.raises(CapError) as err:
        parse_cap(deep, max_bytes=1000)
    assert err.value.rule == "too-large"


def test_a_gb18030_message_is_parsed_once_by_a_parser_that_reads_it() -> None:
    # The former defusedxml pass (expat) could not read multi-byte Chinese encodings at all.
    cap = parse_cap(cap_doc(encoding="GB18030"))
    assert cap.encoding == "gb18030" and cap.infos[0].event == "暴雨"


# -- the CLI --------------------------------------------------------------------------------

def test_cap_validate_prints_the_warnings(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    flawed = tmp_path / "flawed.xml"
    flawed.write_bytes(cap_doc(areas=[GOOD, area(polygons=["30,120 30.1,120.1 30,120"])],
                               event_codes=[("CMA-level", "红色"), ("SAME", "")]))
    clean = tmp_path / "clean.xml"
    clean.write_bytes(cap_doc())
    assert cli_main(["cap", "validate", str(flawed), str(clean)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"OK {flawed} (2 warnings: polygon-degenerate at "
                             f"alert/info[1]/area[2]/polygon[1]: ")
    assert "eventcode-odd at alert/info[1]/eventCode" in out[0]
    assert out[1] == f"OK {clean}"
    [result] = validate_files([flawed])
    assert result.ok and result.cap is not None and len(result.cap.warnings) == 2
