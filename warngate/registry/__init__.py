"""The region and contact registry: rosters in CSV, Excel (.xlsx) or YAML, checked, then imported.

Rosters, recognised by file name (``regions.csv``, ``清溪镇-contacts.csv``, ``清溪镇住户.csv``:
the English kind, or without one the Chinese names in ``kinds.CHINESE_NAMES``), in a workbook
by sheet name the same way (one sheet per roster), or, in YAML, by a
``kind:`` key (``kind: contacts`` and ``rows: [...]``) or by top-level keys naming rosters
(``regions: [...]``, ``contacts: [...]``):

* regions: ``code,name,level,parent_code,lat,lon`` — level county | township | village |
  grid; a township lies in a county, a village in a township, a grid in a village, and each
  code extends its parent's (339901 → 339901001 → 339901001001 → 339901001001001).
* contacts: ``external_id,name,phone,role,region_code,lang,vulnerable,vulnerable_reason,
  address,supervisor,grid_worker`` — ``role`` any role the policy declares, by id or
  Chinese name (村居负责人, 网格员 ...).
* households: contacts whose ``role`` may be left out (it is ``household``), and whose
  phone may be left out when they are bound to a grid worker.

Headers may be written in Chinese (姓名, 手机号码, 角色, 所属区域 ...: ``kinds.HEADER_NAMES``),
CSV files in UTF-8 or GBK/GB18030, with a title row above the header.
* speakers: ``id,name,region_code``.
* supervisors: ``external_id,supervisor_external_id`` (who is called when someone does not
  answer).
* bindings: ``household_external_id,grid_worker_external_id``.

References may point into any file of the same check or import, or (import) to stored rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from warngate.registry.importer import Summary, import_files
from warngate.registry.issues import Issue, RegistryError, format_issues
from warngate.registry.kinds import RoleNames
from warngate.registry.reading import read_files
from warngate.registry.validation import Counts, Existing, validate


@dataclass(frozen=True, slots=True)
class Report:
    """The result of checking files without a database."""

    files: tuple[str, ...]
    counts: Counts
    issues: tuple[Issue, ...]
    warnings: tuple[Issue, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.issues

    def __str__(self) -> str:
        n = len(self.files)
        head = f"checked {n} file{'s' if n != 1 else ''}: {self.counts.describe()}"
        if self.warnings:
            head += "".join(f"\nwarning: {w}" for w in self.warnings)
        if self.ok:
            return f"{head}\nno problems found"
        m = len(self.issues)
        return f"{head}\n{m} problem{'s' if m != 1 else ''}:\n{format_issues(self.issues)}"


def check_files(paths: Sequence[Path], *, roles: RoleNames | None = None) -> Report:
    """Read and check rosters; every reference must resolve within ``paths``.

    ``roles``: the roles contacts may have (a policy's declared roles); defaults if None.
    """
    rosters = read_files(paths)
    plan = validate(rosters, Existing(), roles)
    return Report(tuple(rosters.files), plan.counts, tuple(plan.issues), tuple(plan.warnings))


__all__ = [
    "Counts",
    "Issue",
    "RegistryError",
    "Report",
    "RoleNames",
    "Summary",
    "check_files",
    "format_issues",
    "import_files",
]
