"""Importing rosters into SQLite and PostgreSQL: all or nothing, idempotent, references into
the database, the demo county, and the ``warngate registry`` command."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from warngate.registry import RegistryError, check_files, import_files
from warngate.store import Store
from warngate.store.schema import contacts, regions, speakers

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "registry"
GOOD = FIXTURES / "good"
DEMO = ROOT / "config" / "demo"
WARNGATE = ROOT / ".venv" / "bin" / "warngate"


def good_files() -> list[Path]:
    return sorted(GOOD.iterdir())


def roster(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


async def snapshot(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every registry row, with links spelled as external ids so that snapshots compare."""
    async with store.read() as conn:
        people = [dict(r._mapping) for r in
                  await conn.execute(select(contacts).order_by(contacts.c.external_id))]
        places = [dict(r._mapping) for r in
                  await conn.execute(select(regions).order_by(regions.c.code))]
        devices = [dict(r._mapping) for r in
                   await conn.execute(select(speakers).order_by(speakers.c.id))]
    ext = {p["id"]: p["external_id"] for p in people}
    for p in people:
        p["supervisor_id"] = ext.get(p["supervisor_id"])
        p["responsible_id"] = ext.get(p["responsible_id"])
    return {"regions": places, "contacts": people, "speakers": devices}


async def count(store: Store, table: Any) -> int:
    async with store.read() as conn:
        n: int = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
    return n


async def test_import_fills_codes_links_and_phones(store: Store) -> None:
    summary = await import_files(store.engine, good_files())
    assert str(summary) == (
        "imported 10 regions (1 county, 2 townships, 3 villages, 4 grids), 16 contacts "
        "(1 county_duty, 2 township_duty, 3 village_head, 4 grid_worker, 6 household), "
        "3 speakers, 9 supervisor links, 5 household bindings")
    snap = await snapshot(store)
    people = {p["external_id"]: p for p in snap["contacts"]}
    places = {r["code"]: r for r in snap["regions"]}

    assert people["gw-2"] | {"id": None} == {
        "id": None, "external_id": "gw-2", "name": "李强", "phone": "+8617000000022",
        "role": "grid_worker", "region_code": "339901001001002",
        "township_code": "339901001", "village_code": "339901001001",
        "grid_code": "339901001001002", "supervisor_id": "vh-1", "responsible_id": None,
        "vulnerable": False, "vulnerable_reason": None, "address": None, "lang": "zh-CN",
        "active": True}
    assert (people["td-1"]["phone"], people["td-1"]["township_code"],
            people["td-1"]["village_code"], people["td-1"]["supervisor_id"]) == (
        "+8617000000002", "339901001", None, "cd-1")
    assert people["td-2"]["phone"] == "+8617000000003"
    assert (people["cd-1"]["township_code"], people["cd-1"]["supervisor_id"]) == (None, None)
    assert (people["hh-2"]["responsible_id"], people["hh-2"]["vulnerable"]) == ("gw-1", True)
    assert (people["hh-6"]["village_code"], people["hh-6"]["grid_code"],
            people["hh-6"]["responsible_id"]) == ("339901002001", None, None)

    assert places["339901001002001"] | {"polygon": None} == {
        "code": "339901001002001", "name": "第1网格", "level": "grid",
        "parent_code": "339901001002", "township_code": "339901001",
        "village_code": "339901001002", "lat": None, "lon": None, "polygon": None}
    assert (places["339901002"]["township_code"], places["339901002"]["lat"]) == (
        "339901002", 29.2)
    assert (places["339901"]["township_code"], places["339901"]["parent_code"]) == (None, None)
    assert snap["speakers"][2] == {
        "id": "spk-339901002001", "name": "滨江社区应急广播", "region_code": "339901002001",
        "township_code": "339901002", "village_code": "339901002001", "online": None,
        "status_at": None}


async def test_importing_again_changes_nothing(store: Store) -> None:
    await import_files(store.engine, good_files())
    first = await snapshot(store)
    await import_files(store.engine, good_files())
    assert await snapshot(store) == first
    # The same county in YAML is the same registry.
    await import_files(store.engine, [FIXTURES / "county.yaml"])
    assert await snapshot(store) == first


async def test_reimport_updates_changed_rows(store: Store, tmp_path: Path) -> None:
    await import_files(store.engine, good_files())
    before = await snapshot(store)
    await import_files(store.engine, [
        roster(tmp_path, "contacts.csv", """
            external_id,name,phone,role,region_code
            gw-1,王芳芳,17000000099,grid_worker,339901001001001
        """),
        roster(tmp_path, "supervisors.csv", """
            external_id,supervisor_external_id
            vh-2,td-2
        """),
    ])
    after = await snapshot(store)
    changed = {p["external_id"]: p for p in after["contacts"]}
    assert (changed["gw-1"]["name"], changed["gw-1"]["phone"]) == ("王芳芳", "+8617000000099")
    assert changed["gw-1"]["id"] == {p["external_id"]: p for p in before["contacts"]}[
        "gw-1"]["id"]
    # Links the files do not mention stay as they were.
    assert changed["gw-1"]["supervisor_id"] == "vh-1"
    assert changed["vh-2"]["supervisor_id"] == "td-2"
    untouched = [p for p in after["contacts"] if p["external_id"] not in ("gw-1", "vh-2")]
    assert untouched == [p for p in before["contacts"]
                         if p["external_id"] not in ("gw-1", "vh-2")]


async def test_one_bad_row_means_nothing_is_written(store: Store, tmp_path: Path) -> None:
    county = tmp_path / "county"
    shutil.copytree(GOOD, county)
    households = county / "households.csv"
    households.write_text(households.read_text(encoding="utf-8").replace(
        "hh-5,孙建国,17000000105,", "hh-5,孙建国,+86123,"), encoding="utf-8")
    with pytest.raises(RegistryError) as caught:
        await import_files(store.engine, sorted(county.iterdir()))
    assert [str(i) for i in caught.value.issues] == [
        f"{households}:6: phone: '+86123' is not a valid phone number"]
    for table in (regions, contacts, speakers):
        assert await count(store, table) == 0

    # Nor is anything changed in a registry already loaded.
    await import_files(store.engine, good_files())
    before = await snapshot(store)
    with pytest.raises(RegistryError):
        await import_files(store.engine, [
            roster(tmp_path, "regions.csv", """
                code,name,level,parent_code
                339901003,新镇,township,339901
            """),
            roster(tmp_path, "contacts.csv", """
                external_id,name,phone,role,region_code
                gw-1,改名,17000000021,grid_worker,339901001001001
                td-3,新人,17000000301,township_duty,339901003
                td-4,坏人,17000000302,township_boss,339901003
            """),
        ])
    assert await snapshot(store) == before


async def test_references_resolve_to_stored_rows(store: Store) -> None:
    by_name = {p.name: p for p in good_files()}
    people = [by_name["contacts.csv"], by_name["households.csv"]]
    assert not check_files(people).ok  # alone, their regions are unknown
    await import_files(store.engine, [by_name["regions.csv"]])
    await import_files(store.engine, people)
    await import_files(store.engine, [by_name["speakers.csv"]])
    await import_files(store.engine, [by_name["bindings.csv"], by_name["supervisors.csv"]])
    piecewise = await snapshot(store)
    await import_files(store.engine, good_files())
    assert await snapshot(store) == piecewise


async def test_unknown_references_name_the_database_too(store: Store, tmp_path: Path) -> None:
    await import_files(store.engine, good_files())
    links = roster(tmp_path, "bindings.csv", """
        household_external_id,grid_worker_external_id
        hh-6,vh-1
        hh-404,gw-1
    """)
    with pytest.raises(RegistryError) as caught:
        await import_files(store.engine, [links])
    assert [str(i) for i in caught.value.issues] == [
        f"{links}:2: grid_worker_external_id: 'vh-1' is a village_head, not a grid_worker",
        f"{links}:3: household_external_id: unknown contact 'hh-404' (not in these files or "
        "the database)",
    ]
    await import_files(store.engine, [roster(tmp_path, "bindings.csv", """
        household_external_id,grid_worker_external_id
        hh-6,gw-4
    """)])
    people = {p["external_id"]: p for p in (await snapshot(store))["contacts"]}
    assert people["hh-6"]["responsible_id"] == "gw-4"


async def test_supervisor_loop_through_stored_links(store: Store, tmp_path: Path) -> None:
    await import_files(store.engine, good_files())
    loop = roster(tmp_path, "supervisors.csv", """
        external_id,supervisor_external_id
        cd-1,gw-1
    """)
    with pytest.raises(RegistryError) as caught:
        await import_files(store.engine, [loop])
    assert [str(i) for i in caught.value.issues] == [
        f"{loop}:2: supervisor_external_id: supervisor chain loops: "
        "cd-1 → gw-1 → vh-1 → td-1 → cd-1"]
    # A link in the files replaces the stored one: td-1 → gw-1 → vh-1 → td-2 → cd-1 ends.
    await import_files(store.engine, [roster(tmp_path, "supervisors.csv", """
        external_id,supervisor_external_id
        td-1,gw-1
        vh-1,td-2
    """)])
    people = {p["external_id"]: p for p in (await snapshot(store))["contacts"]}
    assert (people["td-1"]["supervisor_id"], people["vh-1"]["supervisor_id"]) == ("gw-1", "td-2")


async def test_demo_county_imports_whole(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
    try:
        summary = await import_files(store.engine, sorted(DEMO.glob("*.csv")))
        async with store.read() as conn:
            levels: dict[str, int] = dict((await conn.execute(
                select(regions.c.level, func.count()).group_by(regions.c.level))).all())
            roles: dict[str, int] = dict((await conn.execute(
                select(contacts.c.role, func.count()).group_by(contacts.c.role))).all())
            unbound = (await conn.execute(select(func.count()).select_from(contacts).where(
                contacts.c.role == "household", contacts.c.responsible_id.is_(None)))
            ).scalar_one()
            bound_elsewhere = (await conn.execute(
                select(func.count()).select_from(contacts.join(
                    worker := contacts.alias("worker"),
                    contacts.c.responsible_id == worker.c.id))
                .where(worker.c.grid_code != contacts.c.grid_code))).scalar_one()
            unsupervised: dict[str, int] = dict((await conn.execute(
                select(contacts.c.role, func.count()).where(
                    contacts.c.supervisor_id.is_(None), contacts.c.role != "household")
                .group_by(contacts.c.role))).all())
            names = dict((await conn.execute(select(regions.c.code, regions.c.name).where(
                regions.c.code.in_(["339901", "339901001", "339901002"])))).all())
            speaker_count = (await conn.execute(
                select(func.count()).select_from(speakers))).scalar_one()
            first_two = (await conn.execute(select(func.count()).select_from(regions).where(
                regions.c.level == "village",
                regions.c.township_code.in_(["339901001", "339901002"])))).scalar_one()
    finally:
        await store.close()
    assert levels["county"] == 1 and levels["township"] >= 10
    assert levels["village"] >= 200 and levels["grid"] >= 600
    assert roles["household"] >= 50_000
    assert roles["grid_worker"] == levels["grid"]
    assert roles["village_head"] == levels["village"] == speaker_count
    assert roles["township_duty"] >= levels["township"]
    assert unbound == 0 and bound_elsewhere == 0
    assert unsupervised == {"county_duty": 1}  # every grid worker has a supervisor
    assert names == {"339901": "夏溪县", "339901001": "清溪镇", "339901002": "白沙街道"}
    assert first_two >= 20  # the demo warning's townships (tests/e2e/test_demo.py)
    print(f"demo county: {summary}")


def test_generator_writes_the_committed_demo_rosters(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_demo_county.py"),
                    "--out", str(tmp_path)], check=True, capture_output=True)
    for written in sorted(tmp_path.glob("*.csv")):
        assert written.read_bytes() == (DEMO / written.name).read_bytes(), written.name
    assert {p.name for p in tmp_path.glob("*.csv")} == {p.name for p in DEMO.glob("*.csv")}


def _warngate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WARNGATE), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_check_exit_codes() -> None:
    bad = _warngate("registry", "check", *map(str, sorted((FIXTURES / "bad").iterdir())))
    assert bad.returncode == 1, bad.stderr
    assert "6 problems:" in bad.stdout
    assert "bad/contacts.csv:3: phone: '+86123' is not a valid phone number" in bad.stdout

    demo = _warngate("registry", "check", *map(str, sorted(DEMO.glob("*.csv"))))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "no problems found" in demo.stdout

    missing = _warngate("registry", "check", str(FIXTURES / "nowhere.csv"))
    assert missing.returncode == 2
    assert "no such file" in missing.stderr


def test_cli_import_all_or_nothing(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    bad = _warngate("registry", "import", "--database", url,
                    *map(str, sorted((FIXTURES / "bad").iterdir())))
    assert bad.returncode == 1
    assert "phone: '+86123' is not a valid phone number" in bad.stderr
    assert bad.stderr.rstrip().endswith("nothing was imported")
    good = _warngate("registry", "import", "--database", url, *map(str, good_files()))
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("imported 10 regions")


async def test_an_excel_workbook_imports_the_same_rows_as_the_csv_files(
        store: Store, tmp_path: Path) -> None:
    from tests.unit.test_registry import workbook

    await import_files(store.engine, good_files())
    from_csv = await snapshot(store)
    book = workbook(tmp_path / "county.xlsx",
                    {p.stem: p.read_text(encoding="utf-8") for p in good_files()})
    await import_files(store.engine, [book])  # upserts by key: nothing may change
    assert await snapshot(store) == from_csv
