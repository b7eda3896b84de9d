"""Checking rosters as a whole: values, keys, references, the region tree, supervisor chains.

The check is pure: what the database already holds comes in as ``Existing`` (empty for
``warngate registry check``), and the result is either problems or the rows to write.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from warngate.phone import PhoneError, mask
from warngate.registry.issues import Issue
from warngate.registry.kinds import (
    CONTACT_KINDS,
    LEVEL_NAMES,
    LEVELS,
    ROLES,
    SPEAKER_LEVELS,
    RoleNames,
)
from warngate.registry.phones import normalise_phone
from warngate.registry.reading import Rosters, Row

_LANG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
_TRUE = frozenset({"1", "true", "yes", "y", "t", "是"})
_FALSE = frozenset({"0", "false", "no", "n", "f", "否"})
#: Region codes extend their parent's (GB/T 2260 and the grid convention the planner relies
#: on: a grid's first 12 characters are its village).
_SUFFIX = {"township": (r"\d{3}", "3 digits"), "village": (r"\d{3}", "3 digits"),
           "grid": (r"[0-9A-Za-z]{1,20}", "1 to 20 letters or digits")}
_PLURAL = {"county": "counties", "township": "townships", "village": "villages",
           "grid": "grids"}


@dataclass(frozen=True, slots=True)
class StoredRegion:
    level: str
    township_code: str | None
    village_code: str | None


@dataclass(frozen=True, slots=True)
class StoredContact:
    role: str
    supervisor: str | None  # the supervisor's external_id


@dataclass(slots=True)
class Existing:
    """What the database holds that the files refer to; empty when checking files alone.

    A region's code fixes its place in the tree (each code extends its parent's), so a stored
    region never moves and its stored township/village codes stay right.

    Attributes:
        regions: regions the files name but do not define.
        contacts: contacts the files name but do not define, and the supervisor chains above
            every supervisor the files name.
        in_database: references may resolve to the database (import) or not (check).
    """

    regions: dict[str, StoredRegion] = field(default_factory=dict)
    contacts: dict[str, StoredContact] = field(default_factory=dict)
    in_database: bool = False


@dataclass(frozen=True, slots=True)
class References:
    """What the files refer to, found before the database is asked."""

    #: Region codes referred to but not defined in the files.
    region_codes: frozenset[str]
    #: Contacts referred to (supervisors, bindings) but not defined in the files.
    contact_ids: frozenset[str]
    #: Contacts the files give a supervisor, and the supervisors they name.
    relinked: frozenset[str]
    supervisor_targets: frozenset[str]


def references(rosters: Rosters) -> References:
    rows = rosters.rows
    imported = {r.get("code") for r in rows["regions"]}
    wanted = {r.get("parent_code") for r in rows["regions"]}
    wanted.update(r.get("region_code") for r in _contact_rows(rosters))
    wanted.update(r.get("region_code") for r in rows["speakers"])
    defined = {r.get("external_id") for r in _contact_rows(rosters)}
    named = {r.get(c) for r in rows["supervisors"]
             for c in ("external_id", "supervisor_external_id")}
    named.update(r.get(c) for r in rows["bindings"]
                 for c in ("household_external_id", "grid_worker_external_id"))
    return References(
        region_codes=frozenset(wanted - imported - {""}),
        contact_ids=frozenset(named - defined - {""}),
        relinked=frozenset(r.get("external_id") for r in rows["supervisors"]) - {""},
        supervisor_targets=frozenset(
            r.get("supervisor_external_id") for r in rows["supervisors"]) - {""},
    )


@dataclass(slots=True)
class Counts:
    """How many of each: regions by level, contacts by role, speakers, links."""

    regions: Counter[str] = field(default_factory=Counter)
    contacts: Counter[str] = field(default_factory=Counter)
    speakers: int = 0
    supervisor_links: int = 0
    bindings: int = 0

    def describe(self) -> str:
        regions = ", ".join(f"{self.regions[lv]:,} {_PLURAL[lv] if self.regions[lv] != 1 else lv}"
                            for lv in LEVELS if self.regions[lv])
        # The default roles in their order, then the others a policy declares, by name.
        order = {r: i for i, r in enumerate(ROLES)}
        named = sorted((r for r in self.contacts if r != "?" and self.contacts[r]),
                       key=lambda r: (order.get(r, len(order)), r))
        roles = ", ".join(f"{self.contacts[r]:,} {r}" for r in named)
        parts = [
            f"{self.regions.total():,} regions" + (f" ({regions})" if regions else ""),
            f"{self.contacts.total():,} contacts" + (f" ({roles})" if roles else ""),
            f"{self.speakers:,} speakers",
            f"{self.supervisor_links:,} supervisor links",
            f"{self.bindings:,} household bindings",
        ]
        return ", ".join(parts)


@dataclass(slots=True)
class Plan:
    """The outcome of a check: problems, or else the rows to write."""

    issues: list[Issue]
    counts: Counts
    #: Accepted, but a person should look (a phone number two people share).
    warnings: list[Issue] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    contacts: list[dict[str, Any]] = field(default_factory=list)
    speakers: list[dict[str, Any]] = field(default_factory=list)
    #: {"b_ext", "b_target"}: contact → supervisor, household → grid worker.
    supervisor_links: list[dict[str, str]] = field(default_factory=list)
    bindings: list[dict[str, str]] = field(default_factory=list)


def validate(rosters: Rosters, existing: Existing, roles: RoleNames | None = None) -> Plan:
    """Check every row against the others and ``existing``; never raises on bad input.

    ``roles``: the roles contacts may have (a policy's declared roles); the defaults if None.
    """
    return _Check(rosters, existing, roles or RoleNames()).run()


def _contact_rows(rosters: Rosters) -> Iterator[Row]:
    return chain.from_iterable(rosters.rows[k] for k in CONTACT_KINDS)


@dataclass(slots=True)
class _Region:
    row: Row
    level: str | None
    parent: str | None
    record: dict[str, Any]


class _Check:
    def __init__(self, rosters: Rosters, existing: Existing, roles: RoleNames) -> None:
        self.rosters = rosters
        self.role_names = roles
        #: Households without a phone, accepted only once bound to a grid worker.
        self.phoneless: dict[str, Row] = {}
        self.x = existing
        self.where = "these files or the database" if existing.in_database else "these files"
        self.plan = Plan(issues=list(rosters.issues), counts=Counts())
        self.regions: dict[str, _Region | None] = {}  # None: a row too broken to use
        self.roles: dict[str, str | None] = {}  # contacts of the files → role (None: bad)
        self._derived: dict[str, tuple[str | None, str | None]] = {}

    def run(self) -> Plan:
        self.check_regions()
        self.check_contacts()
        self.check_speakers()
        self.check_supervisors()
        self.check_bindings()
        self.check_phoneless()
        self.check_shared_phones()
        order = {f: i for i, f in enumerate(self.rosters.files)}
        for found in (self.plan.issues, self.plan.warnings):
            found.sort(key=lambda i: (order.get(i.file, len(order)), i.row or 0))
        return self.plan

    # -- helpers ---------------------------------------------------------------------------

    def problem(self, row: Row, column: str | None, message: str) -> None:
        self.plan.issues.append(Issue(row.file, row.at(column), column, message))

    def keyed(self, rows: Iterable[Row], key: str, what: str) -> dict[str, Row]:
        """First row of each key; later ones are reported as duplicates."""
        first: dict[str, Row] = {}
        for row in rows:
            value = row.get(key)
            if not value:
                if not row.broken:
                    self.problem(row, key, "missing value")
                continue
            if value in first:
                was = first[value]
                self.problem(row, key, f"duplicate {what} {value!r} (first at {was.file}:"
                                       f"{was.at(key)})")
                continue
            first[value] = row
        return first

    def text(self, row: Row, column: str, *, max_len: int, token: bool = False
             ) -> str | None:
        value = row.get(column)
        if not value:
            self.problem(row, column, "missing value")
            return None
        if len(value) > max_len:
            self.problem(row, column, f"too long ({len(value)} characters; at most {max_len})")
            return None
        if token and any(ch.isspace() for ch in value):
            self.problem(row, column, f"{value!r} contains spaces")
            return None
        return value

    def number(self, row: Row, column: str, limit: float) -> float | None:
        value = row.get(column)
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or abs(number) > limit:
            self.problem(row, column, f"{value!r} is not a number between {-limit:g} and "
                                      f"{limit:g}")
            return None
        return number

    def unknown(self, what: str, value: str) -> str:
        return f"unknown {what} {value!r} (not in {self.where})"

    def region_level(self, code: str) -> tuple[bool, str | None]:
        """(known, level); level is None for a region whose own row is at fault."""
        if code in self.regions:
            region = self.regions[code]
            return True, region.level if region else None
        stored = self.x.regions.get(code)
        return (True, stored.level) if stored else (False, None)

    def derived(self, code: str) -> tuple[str | None, str | None]:
        """(township_code, village_code) of a region, from its place in the tree."""
        if code in self._derived:
            return self._derived[code]
        if code not in self.regions:
            stored = self.x.regions.get(code)
            return (stored.township_code, stored.village_code) if stored else (None, None)
        region = self.regions[code]
        if region is None:
            return None, None
        level, parent = region.level, region.parent
        if level == "township":
            result: tuple[str | None, str | None] = (code, None)
        elif level == "village":
            result = (parent, code)
        elif level == "grid" and parent:
            result = (self.derived(parent)[0], parent)
        else:
            result = (None, None)
        self._derived[code] = result
        return result

    def placed(self, row: Row, allowed: tuple[str, ...], who: str
               ) -> dict[str, str | None] | None:
        """township/village/grid codes for a row's region_code, or None (reported)."""
        code = row.get("region_code")
        if not code:
            self.problem(row, "region_code", "missing value")
            return None
        known, level = self.region_level(code)
        if not known:
            self.problem(row, "region_code", self.unknown("region", code))
            return None
        if level is None:
            return None  # the region's own row is reported
        if level not in allowed:
            self.problem(row, "region_code",
                         f"{who} belongs to a {' or '.join(allowed)}, but {code!r} is a {level}")
            return None
        township, village = self.derived(code)
        return {"region_code": code, "township_code": township, "village_code": village,
                "grid_code": code if level == "grid" else None}

    # -- regions ---------------------------------------------------------------------------

    def check_regions(self) -> None:
        rows = self.keyed(self.rosters.rows["regions"], "code", "region code")
        for code, row in rows.items():
            self.regions[code] = None if row.broken else self.read_region(code, row)
        for code, region in self.regions.items():
            if region is not None and region.level is not None:
                self.check_parent(code, region)
        counts = self.plan.counts.regions
        for code, region in self.regions.items():
            if region is None or region.level is None:
                counts["?"] += 1
                continue
            counts[region.level] += 1
            township, village = self.derived(code)
            region.record.update(township_code=township, village_code=village)
            self.plan.regions.append(region.record)

    def read_region(self, code: str, row: Row) -> _Region:
        self.text(row, "code", max_len=32, token=True)
        name = self.text(row, "name", max_len=200)
        written = row.get("level")
        level: str | None = LEVEL_NAMES.get(written, written.lower())
        if not level:
            self.problem(row, "level", "missing value")
            level = None
        elif level not in LEVELS:
            self.problem(row, "level", f"unknown level {row.get('level')!r}: use one of "
                                       f"{', '.join(LEVELS)}")
            level = None
        parent = row.get("parent_code") or None
        record = {"code": code, "name": name, "level": level, "parent_code": parent,
                  "lat": self.number(row, "lat", 90), "lon": self.number(row, "lon", 180)}
        return _Region(row, level, parent, record)

    def check_parent(self, code: str, region: _Region) -> None:
        row, level, parent = region.row, region.level, region.parent
        assert level is not None
        above = LEVELS[LEVELS.index(level) - 1] if level != "county" else None
        if above is None:
            if parent:
                self.problem(row, "parent_code",
                             "a county is the top of the tree: leave parent_code empty")
            elif not re.fullmatch(r"\d{6}", code):
                self.problem(row, "code", f"a county code is 6 digits (GB/T 2260), not {code!r}")
            return
        if not parent:
            self.problem(row, "parent_code", f"missing value: a {level} lies in a {above}")
            return
        known, parent_level = self.region_level(parent)
        if not known:
            self.problem(row, "parent_code", self.unknown("region", parent))
        elif parent_level is not None and parent_level != above:
            self.problem(row, "parent_code",
                         f"a {level} lies in a {above}, but {parent!r} is a {parent_level}")
        elif parent_level is not None:
            pattern, words = _SUFFIX[level]
            if not re.fullmatch(re.escape(parent) + pattern, code):
                self.problem(row, "code", f"a {level} code is its {above}'s code {parent} "
                                          f"followed by {words}, not {code!r}")

    # -- contacts and speakers -------------------------------------------------------------

    def check_contacts(self) -> None:
        rows = self.keyed(_contact_rows(self.rosters), "external_id", "contact external_id")
        counts = self.plan.counts.contacts
        for ext, row in rows.items():
            written = row.get("role")
            role = self.role_names.id_of(written) if written else None
            self.roles[ext] = role if role and not row.broken else None
            counts[role or "?"] += 1
            if row.broken:
                continue
            self.text(row, "external_id", max_len=64)
            name = self.text(row, "name", max_len=200)
            phone = None
            if not row.get("phone"):
                if role == "household":
                    self.phoneless[ext] = row  # fine once bound (check_phoneless)
                else:
                    self.problem(row, "phone", "missing value")
            else:
                try:
                    phone = normalise_phone(row.get("phone"))
                except PhoneError as exc:
                    self.problem(row, "phone", str(exc))
            place = None
            if not written:
                self.problem(row, "role", "missing value")
            elif role is None:
                self.problem(row, "role", f"unknown role {written!r}: use one of "
                                          f"{self.role_names.describe()}")
            else:
                place = self.placed(row, self.role_names.levels(role), f"a {role}")
            lang = row.get("lang") or "zh-CN"
            if not _LANG.fullmatch(lang) or len(lang) > 16:
                self.problem(row, "lang", f"{lang!r} is not a language tag such as zh-CN")
            vulnerable = self.flag(row, "vulnerable")
            reason = self.optional_text(row, "vulnerable_reason", max_len=500)
            address = self.optional_text(row, "address", max_len=500)
            if place is not None:
                # Everyone on the roster is active: a person put back is planned again.
                self.plan.contacts.append(
                    {"external_id": ext, "name": name, "phone": phone, "role": role,
                     **place, "vulnerable": vulnerable, "vulnerable_reason": reason,
                     "address": address, "lang": lang, "active": True})

    def optional_text(self, row: Row, column: str, *, max_len: int) -> str | None:
        value = row.get(column)
        if not value:
            return None
        if len(value) > max_len:
            self.problem(row, column, f"too long ({len(value)} characters; at most {max_len})")
            return None
        return value

    def check_phoneless(self) -> None:
        """A household without a phone is reached through its bound grid worker; without
        one nobody would ever reach it."""
        bound = {b["b_ext"] for b in self.plan.bindings}
        for ext, row in self.phoneless.items():
            if ext not in bound:
                self.problem(row, "phone",
                             "missing value: a household without a phone must be bound to "
                             "its grid worker (包保网格员: a grid_worker column or a "
                             "bindings row), who reaches it in person")

    def check_shared_phones(self) -> None:
        """Two people with one number: accepted (a couple, a village office), but shown,
        since an answer from that number settles both."""
        first: dict[str, str] = {}
        rows = {r.get("external_id"): r for r in _contact_rows(self.rosters)}
        for contact in self.plan.contacts:
            phone, ext = contact["phone"], contact["external_id"]
            if phone is None:
                continue
            if phone in first:
                was = rows[first[phone]]
                self.plan.warnings.append(Issue(
                    rows[ext].file, rows[ext].at("phone"), "phone",
                    f"{mask(phone)} is also the phone of {first[phone]!r} "
                    f"({was.file}:{was.at('phone')})"))
            else:
                first[phone] = ext

    def flag(self, row: Row, column: str) -> bool:
        value = row.get(column).lower()
        if value in _TRUE:
            return True
        if value and value not in _FALSE:
            self.problem(row, column, f"{row.get(column)!r} is not yes/no "
                                      "(true/false, 1/0, 是/否)")
        return False

    def check_speakers(self) -> None:
        rows = self.keyed(self.rosters.rows["speakers"], "id", "speaker id")
        self.plan.counts.speakers = len(rows)
        for sid, row in rows.items():
            if row.broken:
                continue
            self.text(row, "id", max_len=64, token=True)
            name = self.text(row, "name", max_len=200)
            place = self.placed(row, SPEAKER_LEVELS, "a loudspeaker")
            if place is not None:
                del place["grid_code"]
                self.plan.speakers.append({"id": sid, "name": name, **place})

    # -- links between contacts ------------------------------------------------------------

    def contact_role(self, ext: str) -> tuple[bool, str | None]:
        if ext in self.roles:
            return True, self.roles[ext]
        stored = self.x.contacts.get(ext)
        return (True, stored.role) if stored else (False, None)

    def person(self, row: Row, column: str, role: str | None = None) -> str | None:
        """The contact a link names, if it exists (and has ``role``); else reported."""
        ext = row.get(column)
        if not ext:
            self.problem(row, column, "missing value")
            return None
        known, actual = self.contact_role(ext)
        if not known:
            self.problem(row, column, self.unknown("contact", ext))
            return None
        if role is not None and actual is not None and actual != role:
            self.problem(row, column, f"{ext!r} is a {actual}, not a {role}")
            return None
        return ext if actual is not None else None

    def check_supervisors(self) -> None:
        rows = self.keyed(self.rosters.rows["supervisors"], "external_id",
                          "supervisor link for")
        self.plan.counts.supervisor_links = len(rows)
        edges: dict[str, tuple[str, Row]] = {}
        for row in rows.values():
            if row.broken:
                continue
            who = self.person(row, "external_id")
            boss = self.person(row, "supervisor_external_id")
            if who and boss:
                if who == boss:
                    self.problem(row, "supervisor_external_id",
                                 "a contact cannot be their own supervisor")
                else:
                    edges[who] = (boss, row)
        self.check_cycles(edges)
        self.plan.supervisor_links = [{"b_ext": e, "b_target": s}
                                      for e, (s, _) in edges.items()]

    def check_cycles(self, edges: dict[str, tuple[str, Row]]) -> None:
        """Escalation climbs supervisor chains; a loop would call people round and round."""
        done: set[str] = set()
        for start in edges:
            path: list[str] = []
            on_path: dict[str, int] = {}
            node: str | None = start
            while node is not None and node not in done:
                if node in on_path:
                    loop = [*path[on_path[node]:], node]
                    mine = [edges[n][1] for n in loop[:-1] if n in edges]
                    if mine:
                        row = min(mine, key=lambda r: (self.rosters.files.index(r.file),
                                                       r.line))
                        self.problem(row, "supervisor_external_id",
                                     f"supervisor chain loops: {' → '.join(loop)}")
                    else:
                        self.problem(edges[start][1], "supervisor_external_id",
                                     "the supervisor chain runs into a loop in the database: "
                                     + " → ".join(loop))
                    break
                on_path[node] = len(path)
                path.append(node)
                if node in edges:
                    node = edges[node][0]
                else:
                    stored = self.x.contacts.get(node)
                    node = stored.supervisor if stored else None
            done.update(path)

    def check_bindings(self) -> None:
        rows = self.keyed(self.rosters.rows["bindings"], "household_external_id",
                          "binding for household")
        self.plan.counts.bindings = len(rows)
        for hh, row in rows.items():
            if row.broken:
                continue
            household = self.person(row, "household_external_id", "household")
            worker = self.person(row, "grid_worker_external_id", "grid_worker")
            if household and worker:
                self.plan.bindings.append({"b_ext": hh, "b_target": worker})
