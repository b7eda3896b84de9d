"""``warngate demo``: the whole path on embedded defaults, with live progress.

SQLite in the data folder, simulated SMS / voice / loudspeakers whose population is partly
unreachable and partly slow to answer, the demo county from ``config/demo``, and a red
rainstorm warning from the (fictional) county weather bureau for two townships, sent as a
CAP message through the same path as a real feed.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from sqlalchemy import func, select

from warngate import followup
from warngate.board import alert_progress, answer_counts
from warngate.cap import parse_cap
from warngate.policy import load_policy
from warngate.service import Gateway
from warngate.serving import serving
from warngate.settings import (
    AdapterSettings,
    ApiToken,
    AuthSettings,
    DatabaseSettings,
    DispatchSettings,
    EscalationSettings,
    HttpSettings,
    Settings,
    hash_token,
)
from warngate.sources import cap_to_alert
from warngate.store import Store
from warngate.store.schema import contacts, deliveries, field_reports, followups
from warngate.web.app import build_app

log = logging.getLogger(__name__)

DEMO_TOWNSHIPS = ("339901001", "339901002")


def config_dir() -> Path:
    """``config/`` of the source tree (the demo runs from a checkout, as the README says)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "config" / "demo").is_dir():
            return base / "config"
    raise FileNotFoundError("config/demo not found: run the demo from the warngate checkout")


def demo_settings(data_dir: Path, port: int, token: str) -> Settings:
    sms = {"seed": 7, "delivery_delay": (1.0, 6.0), "unreachable_rate": 0.03,
           "ack_probability": 0.6, "ack_delay": (3.0, 30.0)}
    voice = {"seed": 7, "delivery_delay": (3.0, 10.0), "unreachable_rate": 0.2,
             "ack_probability": 0.7, "ack_delay": (2.0, 8.0)}
    speaker = {"seed": 7, "delivery_delay": (1.0, 3.0), "unreachable_rate": 0.05}
    return Settings(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{data_dir / 'warngate.db'}"),
        http=HttpSettings(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}"),
        auth=AuthSettings(
            tokens=(ApiToken(name="demo-admin", role="admin", token_sha256=hash_token(token)),),
            four_eyes=False,
        ),
        policy_file=config_dir() / "demo" / "policy.yaml",
        adapters=(
            AdapterSettings(name="sms", type="sim-sms", channel="sms", concurrency=100,
                            rate_per_second=400, options=sms),
            AdapterSettings(name="voice", type="sim-voice", channel="voice", concurrency=30,
                            rate_per_second=30, options=voice),
            AdapterSettings(name="speaker", type="sim-speaker", channel="speaker",
                            concurrency=50, rate_per_second=100, options=speaker),
        ),
        escalation=EscalationSettings(sweep_every=2.0),
        dispatch=DispatchSettings(lease=30.0),
    )


def demo_cap(now: datetime) -> bytes:
    template = (config_dir() / "demo" / "cap-red-rainstorm.xml").read_text(encoding="utf-8")
    return template.format(
        identifier=f"DEMO-{uuid.uuid4().hex[:12]}",
        sent=now.isoformat(timespec="seconds"),
        expires=(now + timedelta(hours=6)).isoformat(timespec="seconds"),
        area1=DEMO_TOWNSHIPS[0], area2=DEMO_TOWNSHIPS[1],
    ).encode("utf-8")


async def ensure_registry(store: Store, out: TextIO) -> None:
    from warngate.registry import import_files

    async with store.read() as conn:
        n = (await conn.execute(select(func.count()).select_from(contacts))).scalar_one()
    if n:
        print(f"登记册已在库中 (registry already loaded): {n} contacts", file=out)
        return
    files = sorted((config_dir() / "demo").glob("*.csv"))
    print(f"导入演示县登记册 (importing the demo county): {len(files)} files …", file=out,
          flush=True)
    started = time.perf_counter()
    summary = await import_files(store.engine, files)
    print(f"  {summary} ({time.perf_counter() - started:.1f} s)", file=out)


_COLUMNS = ("planned", "sending", "sent", "delivered", "acknowledged", "failed")


def _progress_lines(progress: dict[str, dict[str, int]], escalated: int, elapsed: float
                    ) -> list[str]:
    head = f"{'t+' + str(int(elapsed)) + 's':>7} {'channel':<8}" + "".join(
        f"{c:>13}" for c in _COLUMNS)
    lines = [head]
    for channel in sorted(progress):
        counts = progress[channel]
        waiting = counts.get("planned", 0) + counts.get("retry", 0)
        row = {**counts, "planned": waiting}
        lines.append(f"{'':>7} {channel:<8}" + "".join(f"{row.get(c, 0):>13}"
                                                     for c in _COLUMNS))
    lines.append(f"{'':>7} escalation steps taken (未确认升级): {escalated}")
    return lines


async def _accountability_lines(gw: Gateway, alert_id: int) -> list[str]:
    """Who answered themselves, who was covered, who is silent; follow-ups and reports."""
    async with gw.store.read() as conn:
        people = await answer_counts(conn, alert_id, None)
        listed, done, moved = (await conn.execute(select(
            func.count(), func.count(followups.c.outcome),
            func.coalesce(func.sum(followups.c.people_moved), 0),
        ).where(followups.c.alert_id == alert_id))).one()
        reports = (await conn.execute(select(func.count()).select_from(field_reports)
                                      .where(field_reports.c.alert_id == alert_id))
                   ).scalar_one()
    return [
        f"{'':>7} 责任人 (responsible) {people['required']}: 本人叫应 answered "
        f"{people['answered']} · 代为确认 covered {people['covered']} · 未叫应 silent "
        f"{people['silent']}",
        f"{'':>7} 入户跟进 follow-ups {listed} (已反馈 recorded {done}, 已转移 moved {moved} 人)"
        f" · 现场报告 field reports {reports}",
    ]


class _FieldTeam:
    """The demo's people in the field: grid workers record what they found at the
    households on their follow-up lists (as the /f/ page would), and one villager's SMS
    reply reports flooding. Deterministic, so every run tells the same story."""

    def __init__(self, gw: Gateway, alert_id: int) -> None:
        self.gw, self.alert_id = gw, alert_id
        self.reported = False

    async def act(self, elapsed: float) -> None:
        if not self.reported and elapsed >= 20:
            await self._report_flooding()
        if elapsed >= 30:
            await self._visit_households()

    async def _report_flooding(self) -> None:
        async with self.gw.store.read() as conn:
            phone = (await conn.execute(
                select(contacts.c.phone)
                .join(deliveries, deliveries.c.contact_id == contacts.c.id)
                .where(deliveries.c.alert_id == self.alert_id,
                       contacts.c.role == "household", contacts.c.phone.is_not(None))
                .order_by(contacts.c.id).limit(1))).scalar_one_or_none()
        if phone is not None:
            self.gw.receipts.field_report(phone=phone, text="家里进水了，一楼已淹，老人需要帮助",
                                          via="sms_reply")
            self.reported = True

    async def _visit_households(self) -> None:
        async with self.gw.store.read() as conn:
            lists = list((await conn.execute(
                select(deliveries.c.id).where(deliveries.c.alert_id == self.alert_id,
                                              deliveries.c.kind == followup.FOLLOWUP_KIND)
                .order_by(deliveries.c.id).limit(12))).scalars())
        for delivery_id in lists:
            found = await followup.find_list(self.gw.store, delivery_id)
            if found is None:
                continue
            for h in [h for h in found.households if h.outcome is None][:2]:
                # Most households are moved, some told in person, a few not found.
                pick = h.id % 10
                outcome = ("evacuated" if pick < 6 else "informed" if pick < 9
                           else "not_found")
                await followup.record_outcome(
                    self.gw.store, found, followup_id=h.id, outcome=outcome,
                    people=1 + h.id % 4 if outcome == "evacuated" else None, note=None)


async def _export_report(gw: Gateway, alert_id: int, data_dir: Path, out: TextIO) -> None:
    from warngate.report import build_report, file_name, write_xlsx

    report = await build_report(gw.store, gw.policy, alert_id=alert_id)
    path = data_dir / file_name(report, "xlsx")
    await write_xlsx(gw.store, gw.policy, report, path)
    print(f"通报 (accountability report) → {path}", file=out)


async def run_demo(
    *, port: int, data_dir: Path, token: str | None, duration: float | None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the demo; ``data_dir`` must exist (the CLI creates it)."""
    token = token or secrets.token_urlsafe(18)
    settings = demo_settings(data_dir, port, token)
    policy = load_policy(settings.policy_file)
    store = await Store.open(settings.database.url)
    try:
        await ensure_registry(store, out)
    finally:
        await store.close()

    app = build_app(settings, policy)
    async with serving(app, settings.http.host, port) as running:
        gw = running.gateway
        base = f"http://127.0.0.1:{port}"
        print(f"\nwarngate demo 已启动: {base}/  (UI)", file=out)
        print(f"API token: {token}", file=out)
        accepted = await gw.alerts.accept(
            cap_to_alert(parse_cap(demo_cap(datetime.now(UTC))), actor="demo-weather-bureau"),
            actor="demo-weather-bureau",
        )
        aid = accepted.alert_id
        print(f"\n夏溪县气象台发布暴雨红色预警 → alert {aid}, townships "
              f"{', '.join(DEMO_TOWNSHIPS)}; first-step recipients: {accepted.recipients}",
              file=out)
        print(f"  curl -H 'Authorization: Bearer {token}' {base}/api/v1/alerts/{aid}/receipts",
              file=out)
        print(f"  curl -H 'Authorization: Bearer {token}' "
              f"'{base}/api/v1/alerts/{aid}/receipts?township={DEMO_TOWNSHIPS[0]}"
              f"&state=silent'", file=out)
        print(f"  curl -H 'Authorization: Bearer {token}' "
              f"'{base}/api/v1/alerts/{aid}/evacuation'", file=out)
        print(f"  curl -H 'Authorization: Bearer {token}' "
              f"'{base}/api/v1/field-reports?alert={aid}'", file=out)
        print(f"  curl -H 'Authorization: Bearer {token}' -o report.xlsx "
              f"'{base}/api/v1/alerts/{aid}/report?format=xlsx'", file=out)
        print("Ctrl-C stops the demo.\n", file=out, flush=True)
        started = time.monotonic()
        field = _FieldTeam(gw, aid)
        while not running.stopping:
            async with gw.store.read() as conn:
                progress = await alert_progress(conn, aid)
                escalated = (await conn.execute(
                    select(func.count()).select_from(deliveries)
                    .where(deliveries.c.alert_id == aid, deliveries.c.step > 0,
                           deliveries.c.role != "speaker")
                )).scalar_one()
            elapsed = time.monotonic() - started
            await field.act(elapsed)
            lines = _progress_lines(progress, escalated, elapsed)
            lines += await _accountability_lines(gw, aid)
            print("\n".join(lines), file=out, flush=True)
            if duration is not None and elapsed >= duration:
                break
            await running.wait(3.0)
        if gw.failure is None:
            await _export_report(gw, aid, data_dir, out)
    if gw.failure is not None:
        print(f"演示因故障停止 (the demo stopped on a failure): {gw.failure}; data kept in",
              data_dir, file=out)
        return 1
    print("demo stopped; data kept in", data_dir, file=out)
    return 0

