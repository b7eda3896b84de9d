"""SMS segment arithmetic and the layout that keeps the acknowledgement in the first segment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from warngate_twilio import segments
from warngate_twilio.sms_text import compose_sms

LINK = "https://warn.example.cn/ack/3f2a-k7x9q2mz4d"
INSTRUCTION = "回复1或点链接确认："


@pytest.mark.parametrize(
    ("text", "encoding", "count"),
    [
        ("", "GSM-7", 0),
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # 160 septets
        ("€" * 81, "GSM-7", 2),  # 162 septets; 76 pairs fit a 153-septet part
        ("中" * 70, "UCS-2", 1),
        ("中" * 71, "UCS-2", 2),
        ("中" * 134, "UCS-2", 2),
        ("中" * 135, "UCS-2", 3),
        ("a" * 69 + "中", "UCS-2", 1),  # one Chinese character: the whole text is UCS-2
        ("a" * 150 + "中", "UCS-2", 3),
        ("😀" * 35, "UCS-2", 1),  # 70 UTF-16 units
        ("中" + "😀" * 35, "UCS-2", 2),
    ],
)
def test_count_and_encoding(text: str, encoding: str, count: int) -> None:
    assert segments.encoding_of(text) == encoding
    assert segments.count(text) == count
    assert segments.split(text).count == count


def test_parts_never_split_a_surrogate_pair_or_an_escape() -> None:
    parts = segments.split("中" + "😀" * 35).parts
    assert parts == ("中" + "😀" * 33, "😀" * 2)  # 67 units would cut the 34th emoji
    gsm = segments.split("€" * 81).parts
    assert [len(p) for p in gsm] == [76, 5]


def test_fit_counts_units() -> None:
    assert segments.fit("abc€€", 4, "GSM-7") == "abc"
    assert segments.fit("中😀中", 2, "UCS-2") == "中"
    assert segments.fit("中文", 10, "UCS-2") == "中文"


@given(st.text(max_size=500))
def test_split_is_lossless_and_within_capacity(text: str) -> None:
    s = segments.split(text)
    assert "".join(s.parts) == text
    assert s.count == segments.count(text)
    alone, each = segments.CAPACITY[s.encoding]
    limit = alone if s.count == 1 else each
    assert all(segments.units(p, s.encoding) <= limit for p in s.parts)


def test_chinese_warning_keeps_ack_and_link_in_first_segment() -> None:
    link = "https://yj.xx.cn/ack/3f2a-k7x9q2mz4d"
    body = "预计未来3小时内夏溪县大部地区将出现50毫米以上降水，请注意防范山洪、地质灾害。" * 5
    sms = compose_sms(headline="夏溪县气象台发布暴雨红色预警", body=body,
                      ack_line=INSTRUCTION + link, max_segments=6)
    assert sms.text == f"夏溪县气象台发布暴雨红色预警\n{INSTRUCTION}{link}\n{body}"
    first = segments.split(sms.text).parts[0]
    assert first.startswith(sms.lead)
    assert link in first and INSTRUCTION in first
    assert sms.encoding == "UCS-2"
    # 14 + 1 + 10 + 36 + 1 + 200 = 262 characters: four 67-character parts.
    assert sms.segments == segments.count(sms.text) == 4
    assert not sms.shortened


def test_headline_gives_way_when_lead_exceeds_67() -> None:
    # 14 + 1 + 10 + 43 = 68 characters of lead in a concatenated message: one too many.
    sms = compose_sms(headline="夏溪县气象台发布暴雨红色预警", body="请注意防范。" * 40,
                      ack_line=INSTRUCTION + LINK, max_segments=6)
    assert sms.lead == f"夏溪县气象台发布暴雨红色…\n{INSTRUCTION}{LINK}"
    assert segments.split(sms.text).parts[0] == sms.lead  # exactly 67: the lead fills it


def test_long_body_is_cut_visibly_to_max_segments() -> None:
    sms = compose_sms(headline="暴雨红色预警", body="降水" * 500, ack_line=INSTRUCTION + LINK,
                      max_segments=3)
    assert sms.segments == 3
    assert sms.shortened
    assert sms.text.endswith("…")
    # As much body as three segments hold: one more character would make a fourth.
    assert segments.units(sms.text) > 3 * 67 - 3


def test_long_headline_is_cut_so_the_link_stays_whole_in_the_first_segment() -> None:
    headline = "夏溪县气象台" * 20
    sms = compose_sms(headline=headline, body="请注意防范。" * 20, ack_line=INSTRUCTION + LINK,
                      prefix="【夏溪应急】", max_segments=6)
    first = segments.split(sms.text).parts[0]
    assert first.startswith("【夏溪应急】夏溪县气象台")
    assert LINK in first
    assert sms.shortened and "…" in sms.lead


def test_single_segment_message_has_the_full_70() -> None:
    # 70 characters in all: alone, the message may use every unit of one segment.
    sms = compose_sms(headline="中" * 20, body="", ack_line="确" * 49, max_segments=1)
    assert segments.units(sms.text) == 70
    assert sms.segments == 1 and not sms.shortened


def test_plain_ascii_stays_gsm() -> None:
    sms = compose_sms(headline="Flood warning", body="Move to higher ground. " * 20,
                      ack_line="Reply 1 or tap: " + LINK, max_segments=2)
    assert sms.encoding == "GSM-7"
    assert sms.segments == 2
    assert sms.text.endswith("...")


def test_link_too_long_for_any_first_segment_is_flagged() -> None:
    sms = compose_sms(headline="预警", body="正文" * 50, ack_line=INSTRUCTION + "h" * 80,
                      max_segments=6)
    assert sms.lead_overflows


def test_no_ack_line_for_plain_messages() -> None:
    sms = compose_sms(headline="【解除】暴雨红色预警", body="暴雨红色预警已解除。", ack_line=None,
                      max_segments=6)
    assert sms.text == "【解除】暴雨红色预警\n暴雨红色预警已解除。"
    assert sms.segments == 1


@given(
    headline=st.text(alphabet=st.sampled_from("暴雨预警ABC abc😀€"), min_size=1, max_size=80),
    body=st.text(alphabet=st.sampled_from("降水山洪注意防范xyz 😀€\n"), max_size=800),
    max_segments=st.integers(min_value=1, max_value=10),
)
def test_layout_invariants(headline: str, body: str, max_segments: int) -> None:
    sms = compose_sms(headline=headline, body=body, ack_line=INSTRUCTION + LINK,
                      max_segments=max_segments)
    assert not sms.lead_overflows  # a 54-unit line always fits once the headline is cut
    assert segments.split(sms.text).parts[0].startswith(sms.lead)
    assert LINK in sms.lead
    assert sms.segments <= max_segments
    assert sms.text.startswith(sms.lead)
