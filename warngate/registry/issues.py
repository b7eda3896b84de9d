"""Problems found in rosters, each tied to the file, line and field a person has to fix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: ``contacts.csv:17: phone: '+86123' is not a valid phone number``.

    Attributes:
        file: the path as it was given.
        row: line number in the file (1 is the first line; CSV headers are line 1), or
            ``None`` for a problem with the whole file.
        field: the column (CSV) or key (YAML) at fault, or ``None``.
        message: what is wrong, in words a roster keeper understands.
    """

    file: str
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class RegistryError(Exception):
    """Rosters that cannot be imported; nothing was written. ``issues`` lists every problem."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        n = len(issues)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in the rosters:\n"
                         + format_issues(issues))


def format_issues(issues: Iterable[Issue]) -> str:
    """One issue per line, in the order given."""
    return "\n".join(str(i) for i in issues)
