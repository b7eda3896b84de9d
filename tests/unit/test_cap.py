"""CAP parsing on our own fixtures (any machine) and on the real messages in ../shared."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warngate.cap import (
    CapError,
    alert_level,
    other_geocodes,
    parse_cap,
    pick_info,
    region_codes,
    validate_files,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "cap"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_chinese_red_rainstorm() -> None:
    cap = parse_cap(load("red-rainstorm-zh-en.xml"))
    assert (cap.version, cap.msg_type, cap.status) == ("1.2", "Alert", "Actual")
    assert cap.sent.utcoffset() is not None and cap.sent.hour == 8
    # The sender states 红色 in an eventCode: that beats severity (Severe → orange).
    assert alert_level(cap) == "red"
    assert region_codes(cap) == ["339901001", "339901002"]
    assert ("SAME", "006113") in other_geocodes(cap)
    info = pick_info(cap, "zh-CN")
    assert info is not None and info.headline == "夏溪县气象台发布暴雨红色预警信号"
    assert pick_info(cap, "zh")is info
    assert pick_info(cap, "en-GB") is cap.infos[0]
    assert pick_info(cap, "fr-FR") is cap.infos[0]  # no French: English


@pytest.mark.parametrize(("name", "rule", "element"), [
    ("xxe.xml", "dtd-forbidden", None),
    ("billion-laughs.xml", "dtd-forbidden", None),
    ("missing-identifier.xml", "schema", "alert/sender"),
    ("update-without-references.xml", "references-required", "alert/references"),
])
def test_refusals_name_rule_and_element(name: str, rule: str, element: str | None) -> None:
    with pytest.raises(CapError) as err:
        parse_cap(load(name))
    assert err.value.rule == rule
    assert err.value.element == element
    assert rule in str(err.value)


@pytest.mark.parametrize(("body", "rule"), [
    (b"", "xml-syntax"),
    (b"<alert", "xml-syntax"),
    (b"<feed xmlns='http://www.w3.org/2005/Atom'/>", "not-cap"),
    (b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.0'/>", "not-cap"),
    (b"\xff\xfe<\x00a\x00", "xml-syntax"),
    # Found by the mutation test below: an encoding Python has no codec for.
    (b'<?xml version="1.0" encoding="AUTF-8"?><alert/>', "xml-syntax"),
])
def test_not_cap_at_all(body: bytes, rule: str) -> None:
    with pytest.raises(CapError) as err:
        parse_cap(body)
    assert err.value.rule == rule


def test_size_limit() -> None:
    data = load("red-rainstorm-zh-en.xml")
    with pytest.raises(CapError) as err:
        parse_cap(data, max_bytes=len(data) - 1)
    assert err.value.rule == "too-large"


def test_update_and_cancel_reference_the_alert() -> None:
    for name, kind in (("update.xml", "Update"), ("cancel.xml", "Cancel")):
        cap = parse_cap(load(name))
        assert cap.msg_type == kind
        [ref] = cap.references
        assert (ref.sender, ref.identifier, ref.sent_text) == (
            "339901@qxj.example.gov.cn", "QX-2026-0001", "2026-07-01T08:00:00+08:00")


def test_severity_decides_without_a_stated_colour() -> None:
    base = load("red-rainstorm-zh-en.xml").replace(
        "<value>红色</value>".encode(), "<value>暴雨</value>".encode())
    assert alert_level(parse_cap(base)) == "orange"
    extreme = base.replace(b"<severity>Severe</severity>", b"<severity>Extreme</severity>")
    assert alert_level(parse_cap(extreme)) == "red"
    unlikely = extreme.replace(b"<certainty>Likely</certainty>",
                               b"<certainty>Unlikely</certainty>")
    assert alert_level(parse_cap(unlikely)) == "orange"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(CapError):
        parse_cap(data)


_VALID = (FIXTURES / "red-rainstorm-zh-en.xml").read_bytes()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.integers(0, len(_VALID) - 1), st.integers(0, 40), st.binary(max_size=12))
def test_mutated_cap_never_crashes(at: int, cut: int, insert: bytes) -> None:
    with contextlib.suppress(CapError):
        parse_cap(_VALID[:at] + insert + _VALID[at + cut:])


# -- the real messages in ../shared ---------------------------------------------------------

def shared(folder: str) -> list[Path]:
    if not SHARED.is_dir():
        return []
    return sorted((SHARED / folder).rglob("*.xml"))


needs_shared = pytest.mark.skipif(not SHARED.is_dir(),
                                  reason=f"real CAP samples not found at {SHARED}")


@needs_shared
@pytest.mark.parametrize("path", shared("valid") + shared("legacy"), ids=lambda p: p.name)
def test_real_valid_messages_are_accepted(path: Path) -> None:
    [result] = validate_files([path])
    assert result.ok, result.reason


@needs_shared
@pytest.mark.parametrize("path", shared("invalid"), ids=lambda p: p.name)
def test_real_invalid_messages_are_refused(path: Path) -> None:
    [result] = validate_files([path])
    assert not result.ok
    expected = {"ca-ec-update-empty-references.xml": "references-required"}.get(
        path.name, "schema")
    assert result.reason is not None and result.reason.startswith(expected), result.reason


@needs_shared
@pytest.mark.parametrize("path", shared("signature-tampered"), ids=lambda p: p.name)
def test_tampered_signatures_parse_and_are_marked_signed(path: Path) -> None:
    assert parse_cap(path.read_bytes()).signed


@needs_shared
def test_real_levels_and_areas() -> None:
    def cap(name: str) -> object:
        return parse_cap((SHARED / "valid" / name).read_bytes())

    cn = parse_cap((SHARED / "valid" / "cn-cma-baoding-lightning-yellow-update.xml").read_bytes())
    assert alert_level(cn) == "yellow"
    # 130602000000 in the national list's 12-digit form: county 130602 (新市区).
    assert region_codes(cn) == ["130602"]
    zh = pick_info(cn, "zh-CN")
    assert zh is not None and zh.language == "zh-CN"
    ie = parse_cap((SHARED / "valid" / "ie-met-eireann-low-temp-ice.xml").read_bytes())
    assert alert_level(ie) == "yellow"  # awareness_level "2; yellow; Moderate"
    tsunami = parse_cap(
        (SHARED / "valid" / "us-noaa-wcatwc-tsunami-warning-update.xml").read_bytes())
    assert alert_level(tsunami) == "red" and tsunami.infos[0].language == "en-US"
    assert region_codes(tsunami) == []  # UGC codes are not region codes
    athoc = parse_cap((SHARED / "valid" / "us-athoc-cancel-no-info-signed.xml").read_bytes())
    assert athoc.msg_type == "Cancel" and not athoc.infos and athoc.signed


@needs_shared
@pytest.mark.parametrize("path", shared("valid") + shared("legacy"), ids=lambda p: p.name)
def test_real_messages_carry_warnings_only_for_real_flaws(path: Path) -> None:
    cap = parse_cap(path.read_bytes())
    for w in cap.warnings:
        assert w.rule and w.element.startswith("alert") and w.message
    # Met Eireann's ring touches itself: kept (repaired when matched), flagged, not dropped.
    if path.name == "ie-met-eireann-low-temp-ice.xml":
        assert [w.rule for w in cap.warnings] == ["polygon-self-intersecting"]
        assert sum(len(a.polygons) for a in cap.infos[0].areas) == 6
