"""Reading roster files (CSV, Excel .xlsx, YAML) into rows that remember the line each value
came from.

Everything is read as text, in every format: YAML would otherwise turn ``0571`` into an
octal number and ``13800138000`` into an int, and the same checks then apply to all. In a
workbook each sheet is a roster, named after its kind like a CSV file (``contacts``,
``households``); problems name the file, the sheet (``county.xlsx[contacts]``) and its row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from warngate.registry.issues import Issue
from warngate.registry.kinds import CONTACT_KINDS, KINDS, Kind, column_of, kind_from_name

_NULL_TAG = "tag:yaml.org,2002:null"
_KIND_NAMES = ", ".join(KINDS)
# File and sheet names may also say it in Chinese (kinds.CHINESE_NAMES).
_NAME_HINT = f"one of {_KIND_NAMES}; or 区划, 联系人, 住户, 喇叭, 上级, 包联"


@dataclass(slots=True)
class Row:
    """One roster row: column → stripped text ("" when empty or absent).

    ``broken`` rows could not be read whole (wrong number of CSV values, a list where a value
    belongs): they are reported once, and count only for their key so that references to
    them do not pile up further errors.
    """

    file: str
    line: int
    values: dict[str, str]
    lines: dict[str, int] | None = None  # YAML: the line of each key
    broken: bool = False

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    def at(self, name: str | None) -> int:
        """The line to name for a problem with ``name``."""
        if self.lines and name in self.lines:
            return self.lines[name]
        return self.line


@dataclass(slots=True)
class Rosters:
    """Every row of a set of files, by kind, and the problems found reading them."""

    files: list[str] = field(default_factory=list)
    rows: dict[str, list[Row]] = field(default_factory=lambda: {k: [] for k in KINDS})
    issues: list[Issue] = field(default_factory=list)

    def problem(self, file: str, row: int | None, column: str | None, message: str) -> None:
        self.issues.append(Issue(file, row, column, message))


def read_files(paths: Sequence[Path]) -> Rosters:
    """Read every file; problems are collected, never raised."""
    rosters = Rosters()
    for path in paths:
        name = str(path)
        rosters.files.append(name)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".xlsx", ".yaml", ".yml"):
            hint = " (save it as .xlsx or 'CSV UTF-8')" if suffix == ".xls" else ""
            rosters.problem(name, None, None,
                            f"cannot read {suffix or 'extensionless'} files{hint}: "
                            "rosters are .csv, .xlsx, .yaml or .yml")
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            rosters.problem(name, None, None, f"cannot read the file: {exc.strerror}")
            continue
        if suffix == ".xlsx":
            _read_xlsx(name, path.stem, data, rosters)
            continue
        text = _decode(name, data, rosters)
        if text is None:
            continue
        if suffix == ".csv":
            _read_csv(name, path.stem, text, rosters)
        else:
            _read_yaml(name, path.stem, text, rosters)
    _split_links(rosters)
    return rosters


def _split_links(rosters: Rosters) -> None:
    """A contact row's ``supervisor`` and ``grid_worker`` become supervisors and bindings
    rows, so that one table of people with their 上级 and 包保网格员 checks like three."""
    for kind in CONTACT_KINDS:
        for row in rosters.rows[kind]:
            ext = row.get("external_id")
            for column, target, key, other in (
                    ("supervisor", "supervisors", "external_id", "supervisor_external_id"),
                    ("grid_worker", "bindings", "household_external_id",
                     "grid_worker_external_id")):
                value = row.values.pop(column, "")
                if value and ext and not row.broken:
                    lines = {key: row.at("external_id"), other: row.at(column)}
                    rosters.rows[target].append(
                        Row(row.file, row.line, {key: ext, other: value}, lines))


def _decode(name: str, data: bytes, rosters: Rosters) -> str | None:
    try:
        # utf-8-sig drops the byte order mark Excel puts in front of "CSV UTF-8" files.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    try:
        # What Excel writes on Chinese Windows ("CSV (逗号分隔)"): GBK, a subset of GB18030.
        return data.decode("gb18030")
    except UnicodeDecodeError:
        pass
    line = data.count(b"\n", 0, first_bad) + 1
    rosters.problem(name, line, None,
                    f"neither UTF-8 nor GBK/GB18030 text (byte 0x{data[first_bad]:02x} "
                    "cannot be decoded): save it as 'CSV UTF-8'")
    return None


def _read_csv(name: str, stem: str, text: str, rosters: Rosters) -> None:
    kind_name = kind_from_name(stem)
    if kind_name is None:
        rosters.problem(name, None, None,
                        "cannot tell which roster this is: put its kind in the file name "
                        f"({_NAME_HINT}), e.g. contacts.csv")
        return
    reader = csv.reader(io.StringIO(text, newline=""))

    def records() -> Iterator[tuple[int, list[str]]]:
        line = 0
        for cells in reader:
            start, line = line + 1, reader.line_num  # a quoted value may span lines
            yield start, cells

    try:
        _read_table(name, KINDS[kind_name], records(), rosters)
    except csv.Error as exc:
        rosters.problem(name, reader.line_num, None, f"not readable as CSV: {exc}")


def _read_xlsx(name: str, stem: str, data: bytes, rosters: Rosters) -> None:
    # openpyxl parses the workbook's XML with defusedxml when it is installed (it is ours).
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # zipfile, XML and openpyxl's own errors: all "unreadable"
        rosters.problem(name, None, None,
                        f"not readable as an Excel workbook (.xlsx): {type(exc).__name__}: {exc}")
        return
    try:
        sheets = book.worksheets
        for sheet in sheets:
            where = f"{name}[{sheet.title}]"
            kind_name = kind_from_name(sheet.title) or (
                kind_from_name(stem) if len(sheets) == 1 else None)
            if kind_name is None:
                rosters.problem(where, None, None,
                                "cannot tell which roster this sheet is: name the sheet after "
                                f"its kind ({_NAME_HINT}), e.g. contacts")
                continue
            records = ((i, [_cell_text(v) for v in values])
                       for i, values in enumerate(sheet.iter_rows(values_only=True), start=1))
            _read_table(where, KINDS[kind_name], records, rosters)
    finally:
        book.close()


def _cell_text(value: object) -> str:
    """A cell as the text a person typed: Excel keeps 13800138000 and 339901001 as numbers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _read_table(name: str, kind: Kind, records: Iterable[tuple[int, list[str]]],
                rosters: Rosters) -> None:
    """Header, then rows: what CSV files and sheets have in common."""
    header: list[str] | None = None
    titles = 0
    for line, cells in records:
        if not any(c.strip() for c in cells):
            continue  # blank lines, and the ",,,," rows spreadsheets leave behind
        if header is None and titles < 3 and _is_title(cells, kind):
            titles += 1  # "夏溪县应急责任人名单" above the header: a heading, not a column
            continue
        if header is None:
            header = _header(name, line, cells, kind, rosters)
            if header is None:
                return
            continue
        rosters.rows[kind.name].append(_csv_row(name, line, header, cells, kind, rosters))
    if header is None:
        rosters.problem(name, None, None,
                        f"the file is empty: a {kind.name} roster starts with the header "
                        f"{','.join(kind.required)}")


def _is_title(cells: list[str], kind: Kind) -> bool:
    """A title row: one value (a merged cell, or text in the first), naming no column."""
    filled = [c for c in cells if c.strip()]
    return len(filled) == 1 and column_of(kind, filled[0]) not in kind.columns


def _header(name: str, line: int, cells: list[str], kind: Kind, rosters: Rosters
            ) -> list[str] | None:
    """Column names, or None when rows cannot be read (required columns are missing).

    Headers may be the English column names or the Chinese ones (``kinds.HEADER_NAMES``).
    """
    header = [column_of(kind, c) if c.strip() else "" for c in cells]
    while header and not header[-1]:
        header.pop()  # trailing empty cells: spreadsheet residue, not columns
    problems = []
    unnamed = [str(i) for i, h in enumerate(header, start=1) if not h]
    if unnamed:
        problems.append(f"column(s) {', '.join(unnamed)} have no name")
    twice = sorted({h for h in header if h and header.count(h) > 1})
    if twice:
        problems.append(f"column(s) {_quoted(twice)} appear more than once")
    unknown = [h for h in header if h and h not in kind.columns]
    if unknown:
        problems.append(f"unknown column(s) {_quoted(unknown)}")
    missing = [c for c in kind.required if c not in header]
    if missing:
        problems.append(f"missing column(s) {_quoted(missing)}")
    if problems:
        optional = f"; optional: {','.join(kind.optional)}" if kind.optional else ""
        rosters.problem(name, line, None,
                        f"header: {'; '.join(problems)} (a {kind.name} roster has columns "
                        f"{','.join(kind.required)}{optional})")
    return None if missing else header


def _csv_row(name: str, line: int, header: list[str], cells: list[str], kind: Kind,
             rosters: Rosters) -> Row:
    values = {h: c.strip() for h, c in zip(header, cells, strict=False) if h}
    row = Row(name, line, values)
    n = len(cells)
    while n > len(header) and not cells[n - 1].strip():
        n -= 1  # trailing empty cells, as after the header
    if n != len(header):
        rosters.problem(name, line, None,
                        f"{n} values but the header has {len(header)} columns "
                        "(a missing or extra comma, or an unclosed quote?)")
        row.broken = True
    _apply_defaults(row, kind)
    return row


def _apply_defaults(row: Row, kind: Kind) -> None:
    for column, value in kind.defaults.items():
        if not row.values.get(column):
            row.values[column] = value


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(node: yaml.Node) -> str | None:
    if not isinstance(node, yaml.ScalarNode):
        return None
    return "" if node.tag == _NULL_TAG else str(node.value).strip()


def _read_yaml(name: str, stem: str, text: str, rosters: Rosters) -> None:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        rosters.problem(name, mark.line + 1 if mark else None, None,
                        f"not valid YAML: {exc.problem or exc}")
        return
    except yaml.YAMLError as exc:
        rosters.problem(name, None, None, f"not valid YAML: {exc}")
        return
    sections = _yaml_sections(name, stem, root, rosters)
    for kind_name, node in sections:
        kind = KINDS[kind_name]
        if _scalar(node) == "":
            continue  # "households:" with nothing under it: an empty roster
        if not isinstance(node, yaml.SequenceNode):
            rosters.problem(name, _line(node), kind.name,
                            "expected a list of rows (each '- column: value ...')")
            continue
        reported: set[str] = set()
        for item in node.value:
            row = _yaml_row(name, item, kind, reported, rosters)
            if row is not None:
                rosters.rows[kind.name].append(row)


def _yaml_sections(name: str, stem: str, root: yaml.Node | None, rosters: Rosters
                   ) -> list[tuple[str, yaml.Node]]:
    if root is None:
        rosters.problem(name, None, None, "the file is empty")
        return []
    if isinstance(root, yaml.SequenceNode):
        kind_name = kind_from_name(stem)
        if kind_name is None:
            rosters.problem(name, _line(root), None,
                            "cannot tell which roster this is: put 'kind:' and 'rows:' at "
                            f"the top, or the kind in the file name (one of {_KIND_NAMES})")
            return []
        return [(kind_name, root)]
    if not isinstance(root, yaml.MappingNode):
        rosters.problem(name, _line(root), None,
                        "expected 'kind:' and 'rows:', or a mapping of rosters "
                        f"({_KIND_NAMES})")
        return []
    entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in root.value:
        key = (_scalar(key_node) or "").lower()
        if key in entries:
            rosters.problem(name, _line(key_node), key, "appears more than once")
            continue
        entries[key] = (key_node, value_node)
    if "kind" in entries:
        key_node, value_node = entries.pop("kind")
        kind_name = (_scalar(value_node) or "").lower()
        rows = entries.pop("rows", None)
        for key, (other, _) in entries.items():
            rosters.problem(name, _line(other), key or None,
                            "unexpected key: a file with 'kind:' has only 'kind:' and 'rows:'")
        if kind_name not in KINDS:
            rosters.problem(name, _line(value_node), "kind",
                            f"unknown kind {kind_name!r}: use one of {_KIND_NAMES}")
            return []
        if rows is None:
            rosters.problem(name, _line(key_node), "rows", "missing: list the rows under 'rows:'")
            return []
        return [(kind_name, rows[1])]
    sections = []
    for key, (key_node, value_node) in entries.items():
        if key in KINDS:
            sections.append((key, value_node))
        else:
            rosters.problem(name, _line(key_node), key or None,
                            f"unknown roster: use one of {_KIND_NAMES} (or 'kind:' and "
                            "'rows:')")
    return sections


def _yaml_row(name: str, item: yaml.Node, kind: Kind, reported: set[str], rosters: Rosters
              ) -> Row | None:
    if not isinstance(item, yaml.MappingNode):
        rosters.problem(name, _line(item), None,
                        "a row must be a mapping of column: value")
        return None
    lines: dict[str, int] = {}
    row = Row(name, _line(item), {}, lines)
    for key_node, value_node in item.value:
        key = column_of(kind, _scalar(key_node) or "")
        if key not in kind.columns:
            if key not in reported:
                reported.add(key)
                optional = f"; optional: {', '.join(kind.optional)}" if kind.optional else ""
                rosters.problem(name, _line(key_node), key or None,
                                f"unknown column (a {kind.name} row has "
                                f"{', '.join(kind.required)}{optional})")
            continue
        if key in lines:
            rosters.problem(name, _line(key_node), key, "appears twice in this row")
            row.broken = True
            continue
        lines[key] = _line(key_node)
        value = _scalar(value_node)
        if value is None:
            rosters.problem(name, _line(value_node), key,
                            "expected a single value, not a list or mapping")
            row.broken = True
            value = ""
        row.values[key] = value
    _apply_defaults(row, kind)
    return row
