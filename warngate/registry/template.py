"""A blank roster workbook (``warngate registry template``): every sheet and column, with
the Chinese headers county staff write, which the reader maps back to the columns."""

from __future__ import annotations

from pathlib import Path

from warngate.registry.kinds import HEADER_NAMES, KINDS

#: Sheet names: the English kind (what the reader goes by) and the Chinese one.
SHEETS: dict[str, str] = {
    "regions": "regions 区划", "contacts": "contacts 联系人", "households": "households 住户",
    "speakers": "speakers 喇叭", "supervisors": "supervisors 上级",
    "bindings": "bindings 包联",
}


def headers(kind: str) -> list[str]:
    """A kind's columns, required first, each under its first Chinese name."""
    names = HEADER_NAMES.get(kind, {})
    return [names[c][0] if c in names else c for c in KINDS[kind].columns]


def write_template(out: Path) -> list[Path]:
    """A workbook (``.xlsx``) with one sheet per roster, or, for any other name, a
    directory of CSV files (UTF-8 with the byte order mark Excel expects); the paths
    written."""
    if out.suffix.lower() == ".xlsx":
        from openpyxl import Workbook
        from openpyxl.styles import Font

        book = Workbook()
        book.remove(book.active)
        for kind, title in SHEETS.items():
            sheet = book.create_sheet(title)
            sheet.append(headers(kind))
            required = len(KINDS[kind].required)
            for cell in sheet[1][:required]:
                cell.font = Font(bold=True)  # bold: required columns
            # Text columns: Excel would turn 13800138000 and 339901001 into numbers.
            for column in sheet.iter_cols(min_row=1, max_row=1):
                sheet.column_dimensions[column[0].column_letter].width = 16
                sheet.column_dimensions[column[0].column_letter].number_format = "@"
        out.parent.mkdir(parents=True, exist_ok=True)
        book.save(out)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in SHEETS:
        path = out / f"{kind}.csv"
        path.write_text(",".join(headers(kind)) + "\r\n", encoding="utf-8-sig")
        written.append(path)
    return written
