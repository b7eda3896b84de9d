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

from warngate.board import alert_progress
from warngate.cap import parse_cap
from warngate.policy import load_policy
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
from warngate.store.schema import contacts, deliveries
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
              f"&state=unacknowledged'", file=out)
        print("Ctrl-C stops the demo.\n", file=out, flush=True)
        started = time.monotonic()
        while not running.stopping:
            async with gw.store.read() as conn:
                progress = await alert_progress(conn, aid)
                escalated = (await conn.execute(
                    select(func.count()).select_from(deliveries)
                    .where(deliveries.c.alert_id == aid, deliveries.c.step > 0,
                           deliveries.c.role != "speaker")
                )).scalar_one()
            elapsed = time.monotonic() - started
            print("\n".join(_progress_lines(progress, escalated, elapsed)), file=out,
                  flush=True)
            if duration is not None and elapsed >= duration:
                break
            await running.wait(3.0)
    if gw.failure is not None:
        print(f"演示因故障停止 (the demo stopped on a failure): {gw.failure}; data kept in",
              data_dir, file=out)
        return 1
    print("demo stopped; data kept in", data_dir, file=out)
    return 0

