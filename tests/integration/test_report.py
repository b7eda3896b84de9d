"""The accountability report (通报, issue 10 item 8), on SQLite and PostgreSQL.

A small county is warned; some people answer themselves in time, one late, one is covered
by their village head, the rest stay silent; one is escalated until their steps run out;
a household is moved; one speaker is offline and one failed. The report's village,
township and county rows say so, the CSV and XLSX files read back the same, the API shows a
township token its own township only, and a drill's report is marked 演练.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import insert, select, update

from tests.integration.test_ack_link import Site, open_site
from tests.integration.test_pipeline import policy as pipeline_policy
from tests.smallcounty import write_small_county
from warngate.alerts import AlertService, NewAlert
from warngate.cli import main
from warngate.delivery import new_row
from warngate.planning import Planner
from warngate.policy import Policy, load_policy
from warngate.receipts import ReceiptWriter, record_for
from warngate.report import ReportRow, build_report, csv_chunks, export, late_people
from warngate.store import Store
from warngate.store.schema import (
    acknowledgements,
    alerts,
    contacts,
    deliveries,
    followups,
    rejected_inputs,
    speakers,
)

T1, T2 = "339901001", "339901002"
V1, V2, V3 = f"{T1}001", f"{T1}002", f"{T1}003"
WITHIN = 5.0  # the pipeline policy's ack.within for every responsible role


def _policy() -> Policy:
    # Nobody is escalated by a sweep during a test; the steps are written by hand.
    return pipeline_policy(step1_after=600, step2_after=1200)


async def _warn(store: Store, policy: Policy, *, status: str = "Actual") -> int:
    accepted = await AlertService(store, policy).accept(NewAlert(
        source="test", sender="test", identifier=str(uuid.uuid4()), sent=str(time.time()),
        level="red", event="暴雨", headline="暴雨红色预警", areas=[T1, T2],
        created_by="test", status=status), actor="test")
    await Planner(store, policy).plan_alert(accepted.alert_id)
    return accepted.alert_id


async def _row(store: Store, alert_id: int, external_id: str) -> Any:
    async with store.read() as conn:
        return (await conn.execute(
            select(deliveries.c.id, deliveries.c.contact_id, deliveries.c.sent_at,
                   contacts.c.supervisor_id)
            .join(contacts, contacts.c.id == deliveries.c.contact_id)
            .where(deliveries.c.alert_id == alert_id, contacts.c.external_id == external_id,
                   deliveries.c.step == 0).order_by(deliveries.c.id).limit(1))).one()


async def _scene(store: Store, policy: Policy) -> tuple[int, dict[str, int]]:
    """The warning and what became of it; returns the alert and the people's ids."""
    await write_small_county(store)
    alert_id = await _warn(store, policy)
    async with store.write() as conn:
        created = (await conn.execute(select(alerts.c.created_at).where(
            alerts.c.id == alert_id))).scalar_one()
        # What the lanes recorded: everything went out 2 s after the warning, village 3's 9 s.
        await conn.execute(update(deliveries).where(deliveries.c.alert_id == alert_id)
                           .values(state="sent", sent_at=created + 2))
        await conn.execute(update(deliveries).where(deliveries.c.village_code == V3)
                           .values(sent_at=created + 9))
        await conn.execute(update(deliveries).where(deliveries.c.speaker_id == f"spk-{V2}")
                           .values(state="failed"))
        await conn.execute(update(speakers).where(speakers.c.id == f"spk-{V1}")
                           .values(online=False))
    writer = ReceiptWriter(store)
    answer_in_time = [f"head-{V1}", f"gw-{V1}001", f"head-{V2}", f"gw-{T2}001001"]
    for ext in answer_in_time:
        writer.acknowledge(delivery_id=(await _row(store, alert_id, ext)).id, via="link")
    await writer.flush()
    # gw-V1-001 answered too, but an hour after their message: late.
    late = await _row(store, alert_id, f"gw-{V1}001")
    async with store.write() as conn:
        await conn.execute(update(acknowledgements)
                           .where(acknowledgements.c.person_id == late.contact_id)
                           .values(at=late.sent_at + 3600))
    # gw-V1-002 never answered; their village head answered for them.
    covered = await _row(store, alert_id, f"gw-{V1}002")
    await record_for(store, alert_id, covered.contact_id, by="supervisor", via="call",
                     actor="村长", note="已电话叫应")
    # gw-V2-001 stayed silent through a call to themselves and one to their village head.
    silent = await _row(store, alert_id, f"gw-{V2}001")
    now = time.time()
    async with store.write() as conn:
        await conn.execute(insert(deliveries), [
            new_row(alert_id=alert_id, contact_id=silent.contact_id, on_behalf_of=None,
                    role="grid_worker",
                    channel="voice", step=1, priority=2, due_at=now, ack_required=True,
                    township_code=T1, village_code=V2, grid_code=f"{V2}001", created_at=now,
                    state="planned"),
            new_row(alert_id=alert_id, contact_id=silent.supervisor_id,
                    on_behalf_of=silent.contact_id, role="village_head", channel="voice",
                    step=2, priority=1, due_at=now, ack_required=True, township_code=T1,
                    village_code=V2, grid_code=f"{V2}001", created_at=now,
                    state="planned")])
        # Their escalation ran out: the mark is on the last row, the village head's call.
        await conn.execute(update(deliveries).where(
            deliveries.c.on_behalf_of == silent.contact_id).values(silent_at=now))
        ids = dict((await conn.execute(select(contacts.c.external_id, contacts.c.id))).all())
        await conn.execute(insert(followups), [
            {"alert_id": alert_id, "household_id": ids[f"hh-{V1}001-0"],
             "grid_worker_id": ids[f"gw-{V1}001"], "reason": "vulnerable",
             "township_code": T1, "village_code": V1, "grid_code": f"{V1}001",
             "created_at": now, "outcome": "evacuated", "people_moved": 3,
             "outcome_at": now, "recorded_by": "gw"},
            {"alert_id": alert_id, "household_id": ids[f"hh-{V1}001-1"],
             "grid_worker_id": ids[f"gw-{V1}001"], "reason": "failed",
             "township_code": T1, "village_code": V1, "grid_code": f"{V1}001",
             "created_at": now, "outcome": None, "people_moved": None, "outcome_at": None,
             "recorded_by": None}])
    return alert_id, ids


def _by_area(rows: list[ReportRow]) -> dict[tuple[str, str | None, str | None], ReportRow]:
    return {(r.level, r.township_code, r.village_code): r for r in rows}


def _people_counts(r: ReportRow) -> tuple[int, ...]:
    c = r.counts
    return (c["responsible"], c["answered"], c["on_time"], c["covered"], c["silent"])


async def test_the_report_counts_each_village_township_and_the_county(store: Store) -> None:
    policy = _policy()
    alert_id, _ids = await _scene(store, policy)
    report = await build_report(store, policy, alert_id=alert_id)
    assert not report.drill and "演练" not in report.title
    rows = _by_area(report.rows)
    assert [r.level for r in report.rows][:2] == ["county", "township"]

    # Village 1: its head in time, one grid worker late, the other covered.
    v1 = rows[("village", T1, V1)]
    assert _people_counts(v1) == (3, 2, 1, 1, 0)
    assert v1.village == "第1镇1村" and v1.township == "第1镇"
    assert (v1.counts["followups"], v1.counts["evacuated"], v1.counts["people_moved"],
            v1.counts["followups_open"]) == (2, 1, 3, 1)
    assert (v1.counts["speakers"], v1.counts["speakers_silent"]) == (1, 1)  # offline
    assert v1.first_delivery_s == 2.0 and v1.on_time_pct == 33.3
    # Village 2: its head in time, one grid worker silent after two escalation steps.
    v2 = rows[("village", T1, V2)]
    assert _people_counts(v2) == (3, 1, 1, 0, 2)
    assert (v2.counts["escalations"], v2.counts["exhausted"]) == (2, 1)
    assert (v2.counts["speakers"], v2.counts["speakers_silent"]) == (1, 1)  # failed
    assert rows[("village", T1, V3)].first_delivery_s == 9.0
    # The township's own duty officer is a row of their own, silent.
    own = rows[("village", T1, None)]
    assert _people_counts(own) == (1, 0, 0, 0, 1) and own.village == "（乡镇本级）"

    t1 = rows[("township", T1, None)]
    assert _people_counts(t1) == (10, 3, 2, 1, 6)
    assert t1.first_delivery_s == 2.0 and t1.on_time_pct == 20.0
    assert (t1.counts["escalations"], t1.counts["exhausted"], t1.counts["speakers"],
            t1.counts["speakers_silent"], t1.counts["evacuated"]) == (2, 1, 3, 2, 1)
    t2 = rows[("township", T2, None)]
    assert _people_counts(t2) == (10, 1, 1, 0, 9)
    county = rows[("county", None, None)]
    assert _people_counts(county) == (20, 4, 3, 1, 15)
    assert county.on_time_pct == 15.0 and county.counts["speakers"] == 6

    # A township's report holds its own villages only.
    mine = await build_report(store, policy, alert_id=alert_id, township=T2)
    assert {r.township_code for r in mine.rows if r.level != "county"} == {T2}
    assert _people_counts(_by_area(mine.rows)[("county", None, None)]) == (10, 1, 1, 0, 9)


async def test_the_late_list_pages_by_keyset_and_says_why(store: Store) -> None:
    policy = _policy()
    alert_id, ids = await _scene(store, policy)
    everyone = await late_people(store, policy, [alert_id], limit=1000)
    assert len(everyone) == 17  # 20 people, 3 answered themselves in time
    status = {p["person_id"]: p["status"] for p in everyone}
    assert status[ids[f"gw-{V1}001"]] == "late"
    assert status[ids[f"gw-{V1}002"]] == "covered"
    assert status[ids[f"gw-{V2}001"]] == "silent"
    assert ids[f"head-{V1}"] not in status
    late = next(p for p in everyone if p["status"] == "late")
    assert late["seconds"] == 3600.0 and late["within"] == WITHIN
    assert late["phone"].count("*") == 4 and late["role_label"] == "网格员"
    exhausted = next(p for p in everyone if p["person_id"] == ids[f"gw-{V2}001"])
    assert exhausted["exhausted"] and exhausted["steps"] == 1

    pages: list[dict[str, Any]] = []
    after = None
    while True:
        page = await late_people(store, policy, [alert_id], limit=5, after=after)
        pages.extend(page)
        if len(page) < 5:
            break
        last = page[-1]
        after = (last["alert_id"], last["township_code"] or "", last["village_code"] or "",
                 last["person_id"])
    assert [p["person_id"] for p in pages] == [p["person_id"] for p in everyone]


async def test_csv_and_xlsx_read_back(store: Store) -> None:
    policy = _policy()
    alert_id, _ids = await _scene(store, policy)
    report = await build_report(store, policy, alert_id=alert_id)

    data = await export(store, policy, report, "csv")
    assert data.startswith("\ufeff".encode())
    # Streamed a few people at a time (the API's answer), the file is the same.
    chunks = [c async for c in csv_chunks(store, policy, report, every=5)]
    assert len(chunks) == 4 and b"".join(chunks) == data  # 17 people: 5, 5, 5, 2
    lines = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert lines[0] == [report.title]
    header = lines[1]
    for name in ("乡镇", "村(社区)", "首条送达用时(秒)", "责任人数", "本人叫应", "按时本人叫应",
                 "按时叫应率(%)", "代为确认", "未叫应", "升级次数", "叫应耗尽", "跟进户数",
                 "已转移户数", "转移人数", "喇叭未播报"):
        assert name in header, name
    total = dict(zip(header, lines[2], strict=True))
    assert (total["层级"], total["责任人数"], total["本人叫应"], total["按时本人叫应"],
            total["按时叫应率(%)"], total["未叫应"]) == ("全县", "20", "4", "3", "15.0", "15")
    start = lines.index(["未按时叫应人员"])
    people = [dict(zip(lines[start + 1], line, strict=True)) for line in lines[start + 2:]]
    assert len(people) == 17
    assert {p["情况"] for p in people} == {"逾期本人叫应", "代为确认", "未叫应"}
    assert all("****" in p["手机号码"] for p in people)

    book = load_workbook(io.BytesIO(await export(store, policy, report, "xlsx")),
                         read_only=True)
    assert book.sheetnames == ["通报", "预警", "未按时叫应人员"]
    sheet = list(book["通报"].iter_rows(values_only=True))
    assert sheet[0][0] == report.title and sheet[1] == tuple(header)
    xtotal = dict(zip(sheet[1], sheet[2], strict=True))
    assert (xtotal["责任人数"], xtotal["按时本人叫应"], xtotal["按时叫应率(%)"]) == (20, 3, 15.0)
    listed = list(book["未按时叫应人员"].iter_rows(values_only=True))
    assert len(listed) == 1 + 17 and listed[0][0] == "预警编号"
    book.close()


async def test_a_drill_produces_the_same_report_marked_as_one(store: Store) -> None:
    policy = _policy()
    await write_small_county(store)
    alert_id = await _warn(store, policy, status="Exercise")
    report = await build_report(store, policy, alert_id=alert_id)
    assert report.drill and report.title.endswith("（演练）")
    county = _by_area(report.rows)[("county", None, None)]
    # Drills reach the township duty officers only (the policy's drills.roles).
    assert _people_counts(county) == (2, 0, 0, 0, 2)
    lines = (await export(store, policy, report, "csv")).decode("utf-8-sig")
    assert "（演练）" in lines.splitlines()[0] and ",演练," in lines


async def test_a_period_report_takes_the_alerts_created_in_it(store: Store) -> None:
    policy = _policy()
    alert_id, _ids = await _scene(store, policy)
    now = time.time()
    report = await build_report(store, policy, since=now - 3600, until=now + 60)
    assert [a["id"] for a in report.alerts] == [alert_id]
    assert _people_counts(_by_area(report.rows)[("county", None, None)]) == (20, 4, 3, 1, 15)
    empty = await build_report(store, policy, since=now + 60, until=now + 120)
    assert empty.alerts == [] and _people_counts(empty.rows[0]) == (0, 0, 0, 0, 0)


@pytest.fixture
async def served(store: Store) -> AsyncIterator[Site]:
    """The whole service over the small county."""
    async with open_site(store) as s:
        yield s


async def test_the_api_scopes_a_township_token_and_serves_files(served: Site) -> None:
    site = served
    alert_id = await site.warn()
    url = f"/api/v1/alerts/{alert_id}/report"
    town = {"Authorization": "Bearer tok-town1"}
    resp = await site.client.get(url, headers={"Authorization": "Bearer tok-admin"})
    body = await resp.json()
    assert resp.status == 200, body
    assert {r["township_code"] for r in body["rows"]} >= {None, T1}
    assert body["columns"]["responsible"] == "责任人数"

    resp = await site.client.get(f"{url}?limit=2", headers=town)
    body = await resp.json()
    assert resp.status == 200 and body["township"] == T1
    assert {r["township_code"] for r in body["rows"] if r["level"] != "county"} == {T1}
    assert len(body["late_people"]) == 2 and body["next_after"]
    assert all(p["township_code"] == T1 for p in body["late_people"])
    resp = await site.client.get(body["next"], headers=town)
    second = await resp.json()
    assert resp.status == 200
    seen = {p["person_id"] for p in body["late_people"]}
    assert not seen & {p["person_id"] for p in second["late_people"]}

    # Another township is refused, and the refusal is kept with its reason.
    resp = await site.client.get(f"{url}?township={T2}", headers=town)
    assert resp.status == 403
    resp = await site.client.get(f"{url}?format=pdf", headers=town)
    assert resp.status == 400 and "format" in (await resp.json())["error"]["message"]
    resp = await site.client.get(f"{url}?after=nonsense", headers=town)
    assert resp.status == 400
    resp = await site.client.get(f"{url}?limit=0", headers=town)
    assert resp.status == 400
    async with site.store.read() as conn:
        kept = (await conn.execute(select(rejected_inputs.c.reason).where(
            rejected_inputs.c.entry_point == f"GET {url}"))).scalars().all()
    assert len(kept) == 4 and any("339901001" in r for r in kept)

    resp = await site.client.get(f"{url}?format=csv", headers=town)
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    assert "filename*=UTF-8''" in resp.headers["Content-Disposition"]
    lines = list(csv.reader(io.StringIO((await resp.read()).decode("utf-8-sig"))))
    areas = {line[1] for line in lines[2:] if line and line[0] in ("乡镇", "村(社区)")}
    assert areas == {"第1镇"}
    resp = await site.client.get(f"{url}?format=xlsx", headers=town)
    assert resp.status == 200 and resp.headers["Content-Disposition"].endswith(".xlsx")
    book = load_workbook(io.BytesIO(await resp.read()), read_only=True)
    assert "未按时叫应人员" in book.sheetnames
    book.close()


def test_the_cli_writes_the_report_of_an_alert_and_of_a_period(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    policy_file = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"

    async def warned() -> int:
        store = await Store.open(url)
        try:
            await write_small_county(store)
            return await _warn(store, load_policy(policy_file))
        finally:
            await store.close()

    alert_id = asyncio.run(warned())
    common = ["--database", url, "--policy", str(policy_file)]
    out = tmp_path / "通报.xlsx"
    assert main(["report", "--alert", str(alert_id), *common, "--out", str(out)]) == 0
    book = load_workbook(out, read_only=True)
    rows = list(book["通报"].iter_rows(values_only=True))
    assert rows[2][0] == "全县" and rows[2][rows[1].index("责任人数")] > 0
    book.close()
    out = tmp_path / "t2.csv"
    assert main(["report", "--alert", str(alert_id), "--township", T2, *common,
                 "--format", "csv", "--out", str(out)]) == 0
    lines = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert {line[1] for line in lines[3:] if line and line[0] == "乡镇"} == {"第2镇"}
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600))
    out = tmp_path / "day.csv"
    assert main(["report", "--from", today, "--to", "2099-01-01", *common,
                 "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8-sig").count("暴雨红色预警") == 1
    # No such alert: exit 1 and no file; a wrong day: exit 2.
    assert main(["report", "--alert", "999", *common, "--out", str(tmp_path / "x.csv")]) == 1
    assert not (tmp_path / "x.csv").exists()
    assert main(["report", "--from", "2026-13-01", "--to", "2026-12-02", *common,
                 "--out", str(tmp_path / "x.csv")]) == 2
