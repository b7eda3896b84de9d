"""Roster checks without a database: every problem is named by file, line and field."""

from __future__ import annotations

import csv
import io
import shutil
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warngate.phone import PhoneError, to_e164
from warngate.registry import Issue, RegistryError, check_files, format_issues
from warngate.registry.kinds import kind_from_name
from warngate.registry.phones import normalise_phone
from warngate.registry.reading import read_files
from warngate.registry.validation import Existing, validate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "registry"
GOOD = FIXTURES / "good"


def county(tmp_path: Path, **files: str) -> list[Path]:
    """The good fixture county in ``tmp_path``, with some files replaced (``name_csv=text``)
    or removed (``name_csv=""``)."""
    for src in GOOD.iterdir():
        shutil.copy(src, tmp_path / src.name)
    for key, text in files.items():
        path = tmp_path / key.replace("_csv", ".csv").replace("_yaml", ".yaml")
        if text:
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        else:
            path.unlink()
    return sorted(p for p in tmp_path.iterdir() if p.suffix in (".csv", ".yaml"))


def problems(tmp_path: Path, paths: list[Path]) -> list[str]:
    report = check_files(paths)
    assert report.ok == (not report.issues)
    return [str(i).removeprefix(f"{tmp_path}/") for i in report.issues]


def test_good_county_has_no_problems_and_is_counted() -> None:
    report = check_files(sorted(GOOD.iterdir()))
    assert report.ok, str(report)
    text = str(report)
    assert "10 regions (1 county, 2 townships, 3 villages, 4 grids)" in text
    assert "16 contacts (1 county_duty, 2 township_duty, 3 village_head, 4 grid_worker, " \
           "6 household)" in text
    assert "3 speakers, 9 supervisor links, 5 household bindings" in text
    assert text.endswith("no problems found")


def test_files_may_come_in_any_order() -> None:
    paths = sorted(GOOD.iterdir(), reverse=True)
    assert check_files(paths).ok


def test_bad_phone_is_named_by_file_line_and_field(tmp_path: Path) -> None:
    paths = county(tmp_path, contacts_csv="""
        external_id,name,phone,role,region_code
        cd-1,赵宏洋,17000000001,county_duty,339901
        td-1,吕春国,+86123,township_duty,339901001
        td-2,高斌,not a number,township_duty,339901002
        vh-1,陈敏,,village_head,339901001001
        vh-2,杨娟,17000000012,village_head,339901001002
        vh-3,林海,17000000013,village_head,339901002001
        gw-1,王芳,17000000021,grid_worker,339901001001001
        gw-2,李强,17000000022,grid_worker,339901001001002
        gw-3,张伟,17000000023,grid_worker,339901001002001
        gw-4,刘洋,17000000024,grid_worker,339901002001001
    """)
    found = problems(tmp_path, paths)
    assert found[0] == "contacts.csv:3: phone: '+86123' is not a valid phone number"
    assert found[1].startswith("contacts.csv:4: phone: 'not a number' is not a phone number")
    assert found[2] == "contacts.csv:5: phone: missing value"
    assert len(found) == 3


def test_missing_columns_are_reported_once_per_file(tmp_path: Path) -> None:
    paths = county(tmp_path, contacts_csv="""
        external_id,name,region_code
        cd-1,赵宏洋,339901
        td-1,吕春国,339901001
    """)
    found = problems(tmp_path, paths)
    header = [f for f in found if f.startswith("contacts.csv")]
    assert header == [
        "contacts.csv:1: header: missing column(s) 'phone', 'role' (a contacts roster has "
        "columns external_id,name,phone,role,region_code; optional: lang,vulnerable,"
        "vulnerable_reason,address,supervisor,grid_worker)"
    ]


def test_unknown_and_repeated_columns(tmp_path: Path) -> None:
    paths = county(tmp_path, speakers_csv="""
        id,name,region_code,name,colour
        spk-1,喇叭,339901001001,喇叭,red
    """)
    assert problems(tmp_path, paths) == [
        "speakers.csv:1: header: column(s) 'name' appear more than once; unknown column(s) "
        "'colour' (a speakers roster has columns id,name,region_code)"
    ]


def test_wrong_number_of_values_is_one_problem_without_follow_ups(tmp_path: Path) -> None:
    # gw-4 loses a comma: its row is reported once, and the binding and supervisor link
    # that name gw-4 are not reported as pointing to an unknown contact.
    paths = county(tmp_path, contacts_csv=(GOOD / "contacts.csv").read_text(encoding="utf-8")
                   .replace("gw-4,刘洋,17000000024,grid_worker,339901002001001,,",
                            "gw-4,刘洋,17000000024,grid_worker,339901002001001"))
    assert problems(tmp_path, paths) == [
        "contacts.csv:11: 5 values but the header has 7 columns (a missing or extra comma, "
        "or an unclosed quote?)"
    ]


def test_blank_lines_and_trailing_empty_cells_are_tolerated(tmp_path: Path) -> None:
    paths = county(tmp_path, speakers_csv=(
        "id,name,region_code,,\r\n"
        "spk-339901001001,清溪社区应急广播,339901001001,,\r\n"
        "\r\n"
        ",,,,\r\n"
        "spk-339901001002,杨家坪村应急广播,339901001002\r\n"
    ))
    assert problems(tmp_path, paths) == []


def test_unknown_role_and_role_in_the_wrong_place(tmp_path: Path) -> None:
    text = (GOOD / "contacts.csv").read_text(encoding="utf-8")
    text = text.replace("vh-3,林海,17000000013,village_head,339901002001",
                        "vh-3,林海,17000000013,village_chief,339901002001")
    text = text.replace("td-2,高斌,170-0000-0003,township_duty,339901002",
                        "td-2,高斌,170-0000-0003,township_duty,339901002001")
    paths = county(tmp_path, contacts_csv=text)
    assert problems(tmp_path, paths) == [
        "contacts.csv:4: region_code: a township_duty belongs to a township, but "
        "'339901002001' is a village",
        "contacts.csv:7: role: unknown role 'village_chief': use one of "
        "county_duty (县级值班), township_duty (乡镇值班), village_head (村居负责人), "
        "grid_worker (网格员), household (户), geo_monitor (群测群防员), "
        "reservoir_patroller (水库巡查员), weather_informant (气象信息员), "
        "shelter_manager (避灾安置场所管理员), fishing_safety_officer (渔船安全员), "
        "resident_cadre (驻村干部)",
    ]


def test_region_tree_problems(tmp_path: Path) -> None:
    paths = county(tmp_path, regions_csv="""
        code,name,level,parent_code,lat,lon
        339901,夏溪县,county,,29.1,119.65
        3399,旧县,county,,,
        339902,邻县,county,339901,,
        339901001,清溪镇,township,339901,29.08,119.89
        339901002,白沙街道,township,339901,91,119.6
        339901001001,清溪社区,village,339901,,
        339901001002,杨家坪村,village,339901009,,
        339901002001,滨江社区,hamlet,339901002,,
        339901001001001,第1网格,grid,,,
        339901001001002,第2网格,grid,339901001002,,
        339901001002001,第1网格,grid,339901002,,
        339901002001001,第1网格,grid,339901001001,,
        339901001001003,第3网格,grid,339901001001,abc,
        339901001,清溪镇,township,339901,,
    """)
    found = [f for f in problems(tmp_path, paths) if f.startswith("regions.csv")]
    assert found == [
        "regions.csv:3: code: a county code is 6 digits (GB/T 2260), not '3399'",
        "regions.csv:4: parent_code: a county is the top of the tree: leave parent_code empty",
        "regions.csv:6: lat: '91' is not a number between -90 and 90",
        "regions.csv:7: parent_code: a village lies in a township, but '339901' is a county",
        "regions.csv:8: parent_code: unknown region '339901009' (not in these files)",
        "regions.csv:9: level: unknown level 'hamlet': use one of county, township, village, "
        "grid",
        "regions.csv:10: parent_code: missing value: a grid lies in a village",
        "regions.csv:11: code: a grid code is its village's code 339901001002 followed by "
        "1 to 20 letters or digits, not '339901001001002'",
        "regions.csv:12: parent_code: a grid lies in a village, but '339901002' is a township",
        "regions.csv:13: code: a grid code is its village's code 339901001001 followed by "
        "1 to 20 letters or digits, not '339901002001001'",
        "regions.csv:14: lat: 'abc' is not a number between -90 and 90",
        "regions.csv:15: code: duplicate region code '339901001' (first at "
        f"{tmp_path}/regions.csv:5)",
    ]


def test_duplicate_keys_across_files_name_the_first(tmp_path: Path) -> None:
    paths = county(tmp_path, households_csv="""
        external_id,name,phone,region_code
        hh-1,黄秀英,17000000101,339901001001001
        gw-2,李强,17000000122,339901001001002
    """)
    found = problems(tmp_path, paths)
    assert (f"households.csv:3: external_id: duplicate contact external_id 'gw-2' (first at "
            f"{tmp_path}/contacts.csv:9)") in found


def test_values_too_long_or_malformed(tmp_path: Path) -> None:
    long_name = "长" * 201
    paths = county(tmp_path, households_csv=f"""
        external_id,name,phone,region_code,vulnerable,lang
        hh-1,{long_name},17000000101,339901001001001,,
        hh-2,周桂兰,17000000102,339901001001001,maybe,
        hh-3,吴志明,17000000103,339901001001002,,zh_CN
        hh-4,徐玉珍,17000000104,339901001002001,否,en
        hh-5,,17000000105,339901002001001,,
    """)
    assert [f for f in problems(tmp_path, paths) if f.startswith("households")] == [
        "households.csv:2: name: too long (201 characters; at most 200)",
        "households.csv:3: vulnerable: 'maybe' is not yes/no (true/false, 1/0, 是/否)",
        "households.csv:4: lang: 'zh_CN' is not a language tag such as zh-CN",
        "households.csv:6: name: missing value",
    ]


def test_speaker_problems(tmp_path: Path) -> None:
    paths = county(tmp_path, speakers_csv="""
        id,name,region_code
        spk 1,喇叭,339901001001
        spk-2,县广播,339901
        spk-3,喇叭,339901777777
        spk-2,喇叭,339901001002
    """)
    assert problems(tmp_path, paths) == [
        "speakers.csv:2: id: 'spk 1' contains spaces",
        "speakers.csv:3: region_code: a loudspeaker belongs to a township or village or "
        "grid, but '339901' is a county",
        "speakers.csv:4: region_code: unknown region '339901777777' (not in these files)",
        f"speakers.csv:5: id: duplicate speaker id 'spk-2' (first at {tmp_path}/speakers.csv:3)",
    ]


def test_supervisor_problems(tmp_path: Path) -> None:
    paths = county(tmp_path, supervisors_csv="""
        external_id,supervisor_external_id
        td-1,cd-1
        td-2,cd-1
        vh-1,td-1
        vh-2,vh-2
        gw-1,vh-1
        gw-1,vh-2
        gw-9,vh-1
        gw-2,
        gw-3,nobody
    """)
    assert problems(tmp_path, paths) == [
        "supervisors.csv:5: supervisor_external_id: a contact cannot be their own supervisor",
        f"supervisors.csv:7: external_id: duplicate supervisor link for 'gw-1' (first at "
        f"{tmp_path}/supervisors.csv:6)",
        "supervisors.csv:8: external_id: unknown contact 'gw-9' (not in these files)",
        "supervisors.csv:9: supervisor_external_id: missing value",
        "supervisors.csv:10: supervisor_external_id: unknown contact 'nobody' (not in these "
        "files)",
    ]


def test_a_supervisor_loop_is_reported_once(tmp_path: Path) -> None:
    paths = county(tmp_path, supervisors_csv="""
        external_id,supervisor_external_id
        gw-1,vh-1
        td-1,cd-1
        vh-1,td-1
        cd-1,gw-1
        gw-2,vh-1
    """)
    assert problems(tmp_path, paths) == [
        "supervisors.csv:2: supervisor_external_id: supervisor chain loops: "
        "gw-1 → vh-1 → td-1 → cd-1 → gw-1",
    ]


def test_binding_problems(tmp_path: Path) -> None:
    paths = county(tmp_path, bindings_csv="""
        household_external_id,grid_worker_external_id
        hh-1,gw-1
        gw-2,gw-1
        hh-3,vh-1
        hh-4,gw-99
        hh-1,gw-2
    """)
    assert problems(tmp_path, paths) == [
        "bindings.csv:3: household_external_id: 'gw-2' is a grid_worker, not a household",
        "bindings.csv:4: grid_worker_external_id: 'vh-1' is a village_head, not a grid_worker",
        "bindings.csv:5: grid_worker_external_id: unknown contact 'gw-99' (not in these files)",
        f"bindings.csv:6: household_external_id: duplicate binding for household 'hh-1' "
        f"(first at {tmp_path}/bindings.csv:2)",
    ]


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    paths = county(tmp_path)
    regions = tmp_path / "regions.csv"
    regions.write_bytes(b"\xef\xbb\xbf" + regions.read_bytes())
    assert problems(tmp_path, paths) == []


def test_gbk_file_is_read_like_utf8(tmp_path: Path) -> None:
    """What Excel writes on Chinese Windows is read, not refused (issue 10, item 6)."""
    paths = county(tmp_path)
    (tmp_path / "households.csv").write_bytes(
        (GOOD / "households.csv").read_text(encoding="utf-8").encode("gbk"))
    assert problems(tmp_path, paths) == []
    assert check_files(paths).counts.contacts["household"] == 6


def test_neither_utf8_nor_gb18030_gets_a_clear_error(tmp_path: Path) -> None:
    paths = county(tmp_path)
    (tmp_path / "households.csv").write_bytes(b"external_id,name,phone,region_code\n\x81\x20\n")
    [unreadable] = [f for f in problems(tmp_path, paths) if f.startswith("households.csv")]
    assert unreadable.startswith("households.csv:2: neither UTF-8 nor GBK/GB18030 text")


def workbook(path: Path, sheets: dict[str, str]) -> Path:
    """An .xlsx with one sheet per CSV text, numbers stored as numbers, as Excel keeps them."""
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for title, text in sheets.items():
        sheet = book.create_sheet(title)
        for line in csv.reader(io.StringIO(text)):
            sheet.append([int(c) if c.isdigit() and not c.startswith("0") else c
                          for c in line])
    book.save(path)
    return path


def test_an_excel_workbook_reads_like_the_csv_files(tmp_path: Path) -> None:
    sheets = {p.stem: p.read_text(encoding="utf-8") for p in sorted(GOOD.iterdir())}
    report = check_files([workbook(tmp_path / "county.xlsx", sheets)])
    assert report.ok, str(report)
    assert str(report).replace("1 file", "6 files") == str(check_files(sorted(GOOD.iterdir())))


def test_excel_problems_name_file_sheet_row_and_field(tmp_path: Path) -> None:
    sheets = {p.stem: p.read_text(encoding="utf-8") for p in sorted(GOOD.iterdir())}
    sheets["contacts"] = sheets["contacts"].replace("17000000013", "12345", 1)
    sheets["联系人"] = sheets.pop("contacts")  # a sheet may be named in Chinese
    sheets["说明"] = "这是填表说明\n"
    assert "12345" in sheets["联系人"]
    book = workbook(tmp_path / "county.xlsx", sheets)
    found = problems(tmp_path, [book])
    assert "county.xlsx[联系人]:7: phone: '12345' is not a valid phone number" in found
    assert any(f.startswith("county.xlsx[说明]: cannot tell which roster this sheet is")
               for f in found)
    assert len(found) == 2


def test_unreadable_workbooks_and_old_excel_files(tmp_path: Path) -> None:
    (tmp_path / "contacts.xlsx").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "households.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    found = problems(tmp_path, sorted(tmp_path.iterdir()))
    assert found[0].startswith("contacts.xlsx: not readable as an Excel workbook (.xlsx)")
    assert found[1].startswith("households.xls: cannot read .xls files (save it as .xlsx")


def test_file_names_decide_the_roster(tmp_path: Path) -> None:
    assert kind_from_name("regions") == "regions"
    assert kind_from_name("清溪镇-Contacts") == "contacts"
    assert kind_from_name("households_2024") == "households"
    assert kind_from_name("speaker") == "speakers"
    assert kind_from_name("contacts-and-regions") is None
    assert kind_from_name("people") is None
    assert kind_from_name("清溪镇住户2024") == "households"
    assert kind_from_name("应急广播音柱") == "speakers"
    assert kind_from_name("住户联系人") is None  # two kinds: the file must say which
    assert kind_from_name("清溪社区居民委员会-contacts") == "contacts"  # English decides
    people = tmp_path / "people.csv"
    people.write_text("external_id\n", encoding="utf-8")
    sheet = tmp_path / "contacts.ods"
    sheet.write_bytes(b"PK\x03\x04")
    empty = tmp_path / "regions.csv"
    empty.write_text("\n\n", encoding="utf-8")
    assert problems(tmp_path, [people, sheet, empty]) == [
        "people.csv: cannot tell which roster this is: put its kind in the file name (one of "
        "regions, contacts, households, speakers, supervisors, bindings; or 区划, 联系人, 住户, "
        "喇叭, 上级, 包联), e.g. contacts.csv",
        "contacts.ods: cannot read .ods files: rosters are .csv, .xlsx, .yaml or .yml",
        "regions.csv: the file is empty: a regions roster starts with the header "
        "code,name,level",
    ]


def test_yaml_roster_matches_the_csv_one() -> None:
    from_yaml = validate(read_files([FIXTURES / "county.yaml"]), Existing())
    from_csv = validate(read_files(sorted(GOOD.iterdir())), Existing())
    assert from_yaml.issues == [] and from_csv.issues == []
    assert from_yaml.regions == from_csv.regions
    assert from_yaml.contacts == from_csv.contacts
    assert from_yaml.speakers == from_csv.speakers
    assert from_yaml.supervisor_links == from_csv.supervisor_links
    assert from_yaml.bindings == from_csv.bindings


def test_yaml_kind_and_rows_form_reads_values_as_text(tmp_path: Path) -> None:
    regions = tmp_path / "a.yaml"
    regions.write_text(textwrap.dedent("""
        kind: regions
        rows:
          - {code: 339901, name: 夏溪县, level: county}
          - code: 339901001
            name: 清溪镇
            level: township
            parent_code: 339901
    """), encoding="utf-8")
    people = tmp_path / "b.yml"
    people.write_text(textwrap.dedent("""
        kind: contacts
        rows:
          - external_id: 0042        # stays "0042", not the octal number 34
            name: 吕春国
            phone: 17000000002      # an int to YAML, a phone number to us
            role: township_duty
            region_code: 339901001
            vulnerable: true
    """), encoding="utf-8")
    plan = validate(read_files([regions, people]), Existing())
    assert plan.issues == []
    assert plan.contacts == [{
        "external_id": "0042", "name": "吕春国", "phone": "+8617000000002",
        "role": "township_duty", "region_code": "339901001", "township_code": "339901001",
        "village_code": None, "grid_code": None, "vulnerable": True,
        "vulnerable_reason": None, "address": None, "lang": "zh-CN", "active": True}]


def test_yaml_problems_name_the_line_of_the_key(tmp_path: Path) -> None:
    roster = tmp_path / "county.yaml"
    roster.write_text(textwrap.dedent("""
        regions:
          - code: 339901
            name: 夏溪县
            level: county
            colour: blue
          - code: 339901001
            name: [清溪镇]
            level: township
            parent_code: 339901
        contacts:
          - external_id: cd-1
            name: 赵宏洋
            phone: '+86123'
            role: county_duty
            region_code: 339901
          - just a string
        gizmos: []
    """).lstrip("\n"), encoding="utf-8")
    assert problems(tmp_path, [roster]) == [
        "county.yaml:5: colour: unknown column (a regions row has code, name, level; "
        "optional: parent_code, lat, lon)",
        "county.yaml:7: name: expected a single value, not a list or mapping",
        "county.yaml:13: phone: '+86123' is not a valid phone number",
        "county.yaml:16: a row must be a mapping of column: value",
        "county.yaml:17: gizmos: unknown roster: use one of regions, contacts, households, "
        "speakers, supervisors, bindings (or 'kind:' and 'rows:')",
    ]


def test_yaml_shape_problems(tmp_path: Path) -> None:
    def check(text: str, name: str = "x.yaml") -> list[str]:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return problems(tmp_path, [path])

    assert check("kind: people\nrows: []\n") == [
        "x.yaml:1: kind: unknown kind 'people': use one of regions, contacts, households, "
        "speakers, supervisors, bindings"]
    assert check("kind: regions\n") == ["x.yaml:1: rows: missing: list the rows under 'rows:'"]
    assert check("regions: {code: 1}\n") == [
        "x.yaml:1: regions: expected a list of rows (each '- column: value ...')"]
    assert check("regions:\n  - {code: 1\n")[0].startswith("x.yaml:3: not valid YAML: ")
    assert check("") == ["x.yaml: the file is empty"]
    assert check("""
        regions:
          - {code: 339901, name: 夏溪县, level: county, name: 冬溪县}
        regions: []
    """) == ["x.yaml:2: name: appears twice in this row",
             "x.yaml:3: regions: appears more than once"]
    assert check("- {code: 339901, name: 夏溪县, level: county}\n", "regions.yaml") == []
    assert check("- {code: 339901}\n", "list.yaml") == [
        "list.yaml:1: cannot tell which roster this is: put 'kind:' and 'rows:' at the top, "
        "or the kind in the file name (one of regions, contacts, households, speakers, "
        "supervisors, bindings)"]


def test_report_lists_every_problem(tmp_path: Path) -> None:
    paths = sorted((FIXTURES / "bad").iterdir())
    report = check_files(paths)
    assert not report.ok
    text = str(report)
    assert "6 problems:" in text
    for issue in report.issues:
        assert str(issue) in text
    assert format_issues(report.issues) == text.split("6 problems:\n", 1)[1]


def test_issue_and_error_text() -> None:
    issues = [Issue("contacts.csv", 17, "phone", "'+86123' is not a valid phone number"),
              Issue("regions.csv", None, None, "the file is empty"),
              Issue("x.yaml", 3, None, "not valid YAML: oops")]
    assert format_issues(issues) == (
        "contacts.csv:17: phone: '+86123' is not a valid phone number\n"
        "regions.csv: the file is empty\n"
        "x.yaml:3: not valid YAML: oops")
    error = RegistryError(issues)
    assert error.issues == issues
    assert str(error).startswith("3 problems in the rosters:\ncontacts.csv:17:")


def _both(raw: str) -> tuple[str, str]:
    try:
        fast = normalise_phone(raw)
    except PhoneError as exc:
        fast = f"error: {exc}"
    try:
        slow = to_e164(raw)
    except PhoneError as exc:
        slow = f"error: {exc}"
    return fast, slow


_mobile_like = st.builds(
    lambda prefix, digits, sep: prefix + sep.join([digits[:3], digits[3:7], digits[7:]]),
    st.sampled_from(["", "+86", "+86 ", "86", "0086", "0", "+1 "]),
    st.text("0123456789", min_size=11, max_size=11).map(lambda d: "1" + d[1:]),
    st.sampled_from(["", " ", "-", "  ", "."]),
)


@given(_mobile_like | st.text("+0123456789 -", max_size=16))
def test_quick_phone_check_agrees_with_libphonenumber(raw: str) -> None:
    fast, slow = _both(raw)
    assert fast == slow


@pytest.mark.parametrize("raw", [
    "17012345678", "+8617012345678", "+86 170 1234 5678", "170-1234-5678", "13800138000",
    "19212345678", "10012345678", "1701234567", "+86123", "021 6123 4567", "+44 20 7946 0958",
])
def test_quick_phone_check_examples(raw: str) -> None:
    fast, slow = _both(raw)
    assert fast == slow
