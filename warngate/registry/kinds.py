"""What each roster holds: its columns, its key, and how a file says which roster it is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from warngate.policy import DEFAULT_ROLES, RoleDef

#: Region levels, top down; each level's parent is the level before it.
LEVELS: tuple[str, ...] = ("county", "township", "village", "grid")

#: The roles every roster may use without a policy: the county's duty officer (who
#: township duty officers escalate to), the four of every township, and the specialists
#: (群测群防员 ...). A policy declares more (``Policy.declared_roles``).
ROLES: tuple[str, ...] = tuple(DEFAULT_ROLES)


class RoleNames:
    """A policy's declared roles as rosters write them: the id, the Chinese label or an
    alias (村居负责人, 网格员, 户主 ...), any case, all meaning the role's id.

    Where each role lives matters: the planner finds people by the township/village/grid
    codes of their region, so a township duty officer registered at a village would never
    be reached by a township-wide warning.
    """

    def __init__(self, roles: Mapping[str, RoleDef] | None = None) -> None:
        self.roles: Mapping[str, RoleDef] = dict(roles if roles is not None else DEFAULT_ROLES)
        self._ids: dict[str, str] = {}
        for role, rd in self.roles.items():
            for name in (role, rd.label, *rd.aliases):
                self._ids.setdefault(name.strip().casefold(), role)

    def id_of(self, written: str) -> str | None:
        """The role id a roster's value names, or None."""
        return self._ids.get(written.strip().casefold())

    def levels(self, role: str) -> tuple[str, ...]:
        return tuple(self.roles[role].lives_at)

    def describe(self) -> str:
        """For error messages: ``village_head (村居负责人), ...``."""
        return ", ".join(f"{r} ({rd.label})" for r, rd in self.roles.items())

#: A loudspeaker serves a village (or a township square); a county-level one would never
#: be reached, since county-wide warnings are planned township by township.
SPEAKER_LEVELS: tuple[str, ...] = ("township", "village", "grid")


@dataclass(frozen=True, slots=True)
class Kind:
    """One roster kind.

    Attributes:
        name: as in file names and YAML ``kind:`` (``regions``).
        key: the column that identifies a row; a second row with the same key is an error.
        required: columns every file of this kind must have.
        optional: columns it may have.
        defaults: values of optional columns left out (a households roster needs no role).
    """

    name: str
    key: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    defaults: Mapping[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


KINDS: Mapping[str, Kind] = {
    k.name: k
    for k in (
        Kind("regions", "code", ("code", "name", "level"), ("parent_code", "lat", "lon")),
        # "supervisor" and "grid_worker" name another contact by external_id: the same as a
        # supervisors or bindings row, for rosters that keep them in one table.
        Kind("contacts", "external_id", ("external_id", "name", "phone", "role", "region_code"),
             ("lang", "vulnerable", "vulnerable_reason", "address", "supervisor",
              "grid_worker")),
        # Contacts whose role defaults to household: the big roster most townships keep apart.
        # A household may have no phone when it is bound to its grid worker.
        Kind("households", "external_id", ("external_id", "name", "phone", "region_code"),
             ("role", "lang", "vulnerable", "vulnerable_reason", "address", "supervisor",
              "grid_worker"), defaults={"role": "household"}),
        Kind("speakers", "id", ("id", "name", "region_code")),
        Kind("supervisors", "external_id", ("external_id", "supervisor_external_id")),
        Kind("bindings", "household_external_id",
             ("household_external_id", "grid_worker_external_id")),
    )
}

#: Kinds whose rows are contacts (one key space).
CONTACT_KINDS: tuple[str, ...] = ("contacts", "households")

_PEOPLE: Mapping[str, tuple[str, ...]] = {
    "external_id": ("编号", "人员编号", "联系人编号", "住户编号", "户编号", "身份标识"),
    "name": ("姓名", "户主姓名", "名称"),
    "phone": ("手机号码", "手机号", "手机", "联系电话", "电话", "电话号码"),
    "role": ("角色", "人员类别", "人员类型", "身份"),
    "region_code": ("所属区域", "区划代码", "所属区划", "所属区划代码", "区域代码",
                    "所在区划", "所属网格", "网格"),
    "lang": ("语言",),
    "vulnerable": ("是否重点人员", "重点人员", "脆弱", "是否脆弱", "是否特殊群体", "特殊群体"),
    "vulnerable_reason": ("原因", "重点原因", "脆弱原因", "特殊情况"),
    "address": ("住址", "地址", "家庭住址", "详细地址"),
    "supervisor": ("上级", "上级编号", "上级责任人"),
    "grid_worker": ("包保网格员", "责任人", "包保责任人", "网格员编号"),
}

#: Column headers as county staff write them, per kind: (a header's words, any case) →
#: the column. The first of each is what ``warngate registry template`` writes.
HEADER_NAMES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "regions": {"code": ("区划代码", "代码", "编码"), "name": ("名称", "区划名称"),
                "level": ("级别", "层级"), "parent_code": ("上级代码", "上级区划代码", "上级"),
                "lat": ("纬度",), "lon": ("经度",)},
    "contacts": _PEOPLE,
    "households": _PEOPLE,
    "speakers": {"id": ("编号", "设备编号"), "name": ("名称", "设备名称"),
                 "region_code": ("所属区域", "区划代码", "所属区划")},
    "supervisors": {"external_id": ("人员编号", "编号"),
                    "supervisor_external_id": ("上级编号", "上级")},
    "bindings": {"household_external_id": ("住户编号", "户编号"),
                 "grid_worker_external_id": ("网格员编号", "包保网格员")},
}

#: Region levels as rosters may write them.
LEVEL_NAMES: Mapping[str, str] = {"县": "county", "县级": "county", "区县": "county",
                                  "乡镇": "township", "乡": "township", "镇": "township",
                                  "街道": "township", "村": "village", "社区": "village",
                                  "村居": "village", "村(居)": "village", "网格": "grid"}


def column_of(kind: Kind, header: str) -> str:
    """The column a header names (English, any case, or a Chinese name); else as written."""
    text = header.strip()
    lowered = text.lower()
    if lowered in kind.columns:
        return lowered
    for column, names in HEADER_NAMES.get(kind.name, {}).items():
        if text in names:
            return column
    return lowered

_SINGULAR = {name.removesuffix("s"): name for name in KINDS}

#: The names township staff give these lists; found anywhere in a name (Chinese has no spaces).
CHINESE_NAMES: Mapping[str, str] = {
    "区划": "regions",
    "联系人": "contacts", "责任人": "contacts",
    "住户": "households", "农户": "households", "居民": "households",
    "喇叭": "speakers", "音柱": "speakers", "广播": "speakers",
    "上级": "supervisors",
    "包联": "bindings", "联户": "bindings",
}


def kind_from_name(stem: str) -> str | None:
    """The kind a file or sheet name announces: ``regions``, ``清溪镇-contacts``,
    ``households_2024``, ``清溪镇住户``, ``联系人``.

    Returns None when the name names no kind or more than one.
    """
    words = {w for w in re.split(r"[^0-9a-z]+", stem.lower()) if w}
    found = {w if w in KINDS else _SINGULAR.get(w) for w in words}
    found.discard(None)
    if not found:
        # Only without an English kind word: "居民委员会-contacts" stays a contacts roster.
        found = {kind for name, kind in CHINESE_NAMES.items() if name in stem}
    return found.pop() if len(found) == 1 else None
