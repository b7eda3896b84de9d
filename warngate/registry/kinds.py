"""What each roster holds: its columns, its key, and how a file says which roster it is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from warngate.policy import ROLE_PRIORITY

#: Region levels, top down; each level's parent is the level before it.
LEVELS: tuple[str, ...] = ("county", "township", "village", "grid")

#: Contact roles: the county's duty officer (who township duty officers escalate to), then
#: every person role the policy knows ("speaker" is a device, not a contact).
ROLES: tuple[str, ...] = tuple(r for r in ROLE_PRIORITY if r != "speaker")

#: Where each role lives. The planner finds people by the township/village/grid codes of
#: their region, so a township duty officer registered at a village would never be reached
#: by a township-wide warning.
ROLE_LEVELS: Mapping[str, tuple[str, ...]] = {
    "county_duty": ("county",),
    "township_duty": ("township",),
    "village_head": ("village",),
    "grid_worker": ("grid",),
    "household": ("village", "grid"),
}

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
        Kind("contacts", "external_id", ("external_id", "name", "phone", "role", "region_code"),
             ("lang", "vulnerable")),
        # Contacts whose role defaults to household: the big roster most townships keep apart.
        Kind("households", "external_id", ("external_id", "name", "phone", "region_code"),
             ("role", "lang", "vulnerable"), defaults={"role": "household"}),
        Kind("speakers", "id", ("id", "name", "region_code")),
        Kind("supervisors", "external_id", ("external_id", "supervisor_external_id")),
        Kind("bindings", "household_external_id",
             ("household_external_id", "grid_worker_external_id")),
    )
}

#: Kinds whose rows are contacts (one key space).
CONTACT_KINDS: tuple[str, ...] = ("contacts", "households")

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
