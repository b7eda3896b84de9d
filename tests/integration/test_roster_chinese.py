"""Rosters as a county writes them (issue 10, item 6), imported into SQLite and PostgreSQL:
Chinese headers and role names in a GBK file under a title row, people taken off by
``--replace`` and then never planned, a phone two people share reported, households
without a phone accepted only when bound to their grid worker, and the blank template."""

from __future__ import annotations

import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from warngate.alerts import AlertService, NewAlert
from warngate.planning import Planner
from warngate.policy import Policy, load_policy
from warngate.registry import RegistryError, RoleNames, check_files, import_files
from warngate.store import Store
from warngate.store.schema import audit_log, contacts, deliveries

ROOT = Path(__file__).resolve().parents[2]
GOOD = ROOT / "tests" / "fixtures" / "registry" / "good"
WARNGATE = ROOT / ".venv" / "bin" / "warngate"
T1 = "339901001"
V1 = "339901001001"
G1 = "339901001001001"


def gbk(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(textwrap.dedent(text).lstrip("\n").replace("\n", "\r\n").encode("gbk"))
    return path


def county_regions(tmp_path: Path) -> Path:
    target = tmp_path / "regions.csv"
    target.write_bytes((GOOD / "regions.csv").read_bytes())
    return target


def chinese_contacts(tmp_path: Path) -> Path:
    return gbk(tmp_path, "清溪镇责任人.csv", """
        夏溪县清溪镇应急责任人名单,,,,,
        编号,姓名,手机号码,角色,所属区域,上级
        cd-1,赵宏洋,17000000001,县级值班,339901,
        td-1,吕春国,170 0000 0002,乡镇值班,339901001,cd-1
        vh-1,陈敏,17000000011,村居负责人,339901001001,td-1
        gw-1,王芳,17000000021,网格员,339901001001001,vh-1
        geo-1,李地,17000000031,群测群防员,339901001001,vh-1
    """)


def chinese_households(tmp_path: Path, extra: str = "") -> Path:
    return gbk(tmp_path, "清溪镇住户.csv", """
        清溪镇住户名单
        户编号,户主姓名,手机,所属区域,是否重点人员,原因,住址,包保网格员
        hh-1,黄秀英,17000000101,339901001001001,是,独居老人,清溪社区3号,gw-1
        hh-2,周桂兰,,339901001001001,是,卧床,清溪社区5号,gw-1
        hh-3,孙建国,17000000103,339901001001001,,,,
    """ + extra)


async def rows(store: Store) -> dict[str, Any]:
    async with store.read() as conn:
        people = {r.external_id: r for r in await conn.execute(select(contacts))}
    return people


async def test_chinese_headers_in_gbk_under_a_title_row_import(store: Store,
                                                               tmp_path: Path) -> None:
    files = [county_regions(tmp_path), chinese_contacts(tmp_path), chinese_households(tmp_path)]
    summary = await import_files(store.engine, files)
    assert str(summary).splitlines()[0] == (
        "imported 10 regions (1 county, 2 townships, 3 villages, 4 grids), 8 contacts "
        "(1 county_duty, 1 township_duty, 1 village_head, 1 grid_worker, 3 household, "
        "1 geo_monitor), 0 speakers, 4 supervisor links, 2 household bindings")
    people = await rows(store)
    assert (people["td-1"].role, people["td-1"].phone, people["td-1"].township_code) == (
        "township_duty", "+8617000000002", T1)
    assert people["geo-1"].role == "geo_monitor"
    ids = {p.id: ext for ext, p in people.items()}
    assert ids[people["gw-1"].supervisor_id] == "vh-1"
    hh1, hh2 = people["hh-1"], people["hh-2"]
    assert (hh1.vulnerable, hh1.vulnerable_reason, hh1.address, ids[hh1.responsible_id]) == (
        True, "独居老人", "清溪社区3号", "gw-1")
    # Bound to its grid worker, a household without a phone is accepted ...
    assert (hh2.phone, ids[hh2.responsible_id], hh2.active) == (None, "gw-1", True)
    async with store.read() as conn:
        [audit] = (await conn.execute(select(audit_log.c.action, audit_log.c.detail))).all()
    assert audit.action == "registry_import" and audit.detail["contacts"] == 8

    # ... and no message is planned to it; its neighbours' are.
    pol = load_policy(ROOT / "config" / "policy.yaml")
    planned = await plan(store, pol, [V1])
    assert {"hh-1", "hh-3"} <= planned and "hh-2" not in planned
    assert {"td-1", "vh-1", "gw-1"} <= planned


async def plan(store: Store, pol: Policy, areas: list[str], event: str = "暴雨") -> set[str]:
    accepted = await AlertService(store, pol).accept(NewAlert(
        source="test", sender="test", identifier=str(uuid.uuid4()), sent=str(time.time()),
        level="red", event=event, headline="预警", areas=areas, created_by="test"),
        actor="test")
    await Planner(store, pol).plan_alert(accepted.alert_id)
    async with store.read() as conn:
        return set((await conn.execute(
            select(contacts.c.external_id)
            .join(deliveries, deliveries.c.contact_id == contacts.c.id)
            .where(deliveries.c.alert_id == accepted.alert_id))).scalars())


async def test_an_unbound_household_without_a_phone_is_refused(store: Store,
                                                               tmp_path: Path) -> None:
    files = [county_regions(tmp_path), chinese_contacts(tmp_path),
             chinese_households(tmp_path, "hh-4,钱二,,339901001001001,,,,\n")]
    with pytest.raises(RegistryError) as caught:
        await import_files(store.engine, files)
    assert [str(i) for i in caught.value.issues] == [
        f"{files[2]}:6: phone: missing value: a household without a phone must be bound to "
        "its grid worker (包保网格员: a grid_worker column or a bindings row), who reaches it "
        "in person"]
    assert await rows(store) == {}


async def test_a_phone_two_people_share_is_reported_not_refused(store: Store,
                                                                tmp_path: Path) -> None:
    await import_files(store.engine, [county_regions(tmp_path), chinese_contacts(tmp_path)])
    households = chinese_households(
        tmp_path, "hh-5,吴一,17000000101,339901001001001,,,,\nhh-6,郑二,17000000011,"
                  "339901001001001,,,,\n")
    summary = await import_files(store.engine, [households])
    assert [str(w) for w in summary.warnings] == [
        f"{households}:6: phone: +86170****0101 is also the phone of 'hh-1' ({households}:3)",
        "(database): phone: +86170****0011 of 'hh-6' is also the phone of 'vh-1' (陈敏), "
        "already registered"]
    assert "2 warnings (imported all the same):" in str(summary)
    assert {"hh-5", "hh-6"} <= set(await rows(store))


async def test_replace_takes_people_off_their_townships_roster(store: Store,
                                                               tmp_path: Path) -> None:
    files = [county_regions(tmp_path), chinese_contacts(tmp_path), chinese_households(tmp_path)]
    await import_files(store.engine, files)
    # Another township's people must stay whatever this township's file says.
    other = gbk(tmp_path, "白沙街道-contacts.csv", """
        external_id,name,phone,role,region_code
        td-2,高斌,17000000003,township_duty,339901002
    """)
    await import_files(store.engine, [other])
    # The new list: 孙建国 (hh-3) moved away, 李地 (geo-1) is no longer a monitor.
    (tmp_path / "new").mkdir()
    contacts_now = gbk(tmp_path / "new", "清溪镇责任人.csv", """
        编号,姓名,手机号码,角色,所属区域
        td-1,吕春国,17000000002,township_duty,339901001
        vh-1,陈敏,17000000011,village_head,339901001001
        gw-1,王芳,17000000021,grid_worker,339901001001001
    """)
    households_now = gbk(tmp_path / "new", "清溪镇住户.csv", """
        户编号,户主姓名,手机,所属区域,包保网格员
        hh-1,黄秀英,17000000101,339901001001001,gw-1
        hh-2,周桂兰,,339901001001001,gw-1
    """)
    summary = await import_files(store.engine, [contacts_now, households_now], replace=True)
    assert summary.deactivated == 2
    assert "2 contacts no longer on their township's roster" in str(summary)
    people = await rows(store)
    assert {e for e, p in people.items() if not p.active} == {"hh-3", "geo-1"}
    assert people["td-2"].active and people["cd-1"].active  # other places untouched
    planned = await plan(store, load_policy(ROOT / "config" / "policy.yaml"), [V1],
                         event="地质灾害")
    assert "hh-3" not in planned and "geo-1" not in planned and "hh-1" in planned
    # Back on the list, back in the warnings.
    await import_files(store.engine, [chinese_households(tmp_path)])
    assert (await rows(store))["hh-3"].active


async def test_a_role_the_policy_declares_may_be_written_in_chinese(tmp_path: Path) -> None:
    pol = Policy.model_validate({
        "levels": {lv: {} for lv in ("blue", "yellow", "orange", "red")},
        "roles": {"ferry_keeper": {"label": "渡口管理员", "aliases": ["渡管员"],
                                   "lives_at": ["village"]}}})
    people = gbk(tmp_path, "contacts.csv", """
        编号,姓名,手机号码,角色,所属区域
        f-1,渡口甲,17000000041,渡管员,339901001001
        f-2,渡口乙,17000000042,Ferry_Keeper,339901001001
    """)
    files = [county_regions(tmp_path), people]
    assert not check_files(files).ok  # unknown without the policy
    report = check_files(files, roles=RoleNames(pol.declared_roles()))
    assert report.ok, str(report)
    assert report.counts.contacts["ferry_keeper"] == 2


def test_template_lists_every_sheet_and_column_and_reads_back(tmp_path: Path) -> None:
    from openpyxl import load_workbook

    out = tmp_path / "名单模板.xlsx"
    done = subprocess.run([str(WARNGATE), "registry", "template", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    book = load_workbook(out)
    assert [s.title for s in book.worksheets] == [
        "regions 区划", "contacts 联系人", "households 住户", "speakers 喇叭",
        "supervisors 上级", "bindings 包联"]
    assert [c.value for c in book["households 住户"][1]] == [
        "编号", "姓名", "手机号码", "所属区域", "角色", "语言", "是否重点人员", "原因", "住址",
        "上级", "包保网格员"]
    # The blank template is a valid (empty) set of rosters.
    assert check_files([out]).ok
    # A filled-in copy imports as it is.
    sheet = book["regions 区划"]
    sheet.append(["339901", "夏溪县", "县"])
    sheet.append(["339901001", "清溪镇", "乡镇", "339901"])
    book["contacts 联系人"].append(["td-1", "吕春国", "17000000002", "乡镇值班", "339901001"])
    book.save(out)
    report = check_files([out])
    assert report.ok, str(report)
    assert report.counts.contacts["township_duty"] == 1
