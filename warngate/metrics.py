"""Prometheus text exposition of the gateway's counters (hand-written: a few lines of text
do not justify another dependency)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.escalation import SILENT_COUNTS
from warngate.store.schema import alerts, deliveries, rejected_inputs

if TYPE_CHECKING:
    from warngate.service import Gateway


def _line(name: str, value: float, **labels: str) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


async def _database_gauges(conn: AsyncConnection) -> list[str]:
    out = ["# HELP warngate_deliveries Deliveries by channel and state.",
           "# TYPE warngate_deliveries gauge"]
    for channel, state, n in await conn.execute(
        select(deliveries.c.channel, deliveries.c.state, func.count())
        .group_by(deliveries.c.channel, deliveries.c.state)
    ):
        out.append(_line("warngate_deliveries", n, channel=channel, state=state))
    out += ["# HELP warngate_alerts Alerts by state.", "# TYPE warngate_alerts gauge"]
    for state, n in await conn.execute(
        select(alerts.c.state, func.count()).group_by(alerts.c.state)
    ):
        out.append(_line("warngate_alerts", n, state=state))
    unreached = (await conn.execute(
        select(func.count()).select_from(alerts).where(alerts.c.no_recipients.is_(True))))
    out += ["# HELP warngate_alerts_unreached Alerts that matched no recipient at all.",
            "# TYPE warngate_alerts_unreached gauge",
            _line("warngate_alerts_unreached", unreached.scalar_one())]
    rejected = (await conn.execute(select(func.count()).select_from(rejected_inputs)))
    out += ["# HELP warngate_rejected_inputs Inputs refused and kept with a reason.",
            "# TYPE warngate_rejected_inputs gauge",
            _line("warngate_rejected_inputs", rejected.scalar_one())]
    return out


async def render_metrics(gw: Gateway) -> str:
    out = [
        "# HELP warngate_lane_results_total Send outcomes per channel since start.",
        "# TYPE warngate_lane_results_total counter",
    ]
    for channel, lane in sorted(gw.dispatcher.lanes.items()):
        for outcome, n in sorted(lane.counts.items()):
            out.append(_line("warngate_lane_results_total", n, channel=channel,
                             outcome=outcome))
    # Several scrapers (or a scraper and a hundred boards) share one count a second.
    out += await gw.store.shared("metrics", _database_gauges)
    if gw.feeds is not None:
        out += ["# HELP warngate_feed_up 1 if the feed's last poll succeeded.",
                "# TYPE warngate_feed_up gauge"]
        for st in gw.feeds.status.values():
            out.append(_line("warngate_feed_up", int(st.up), feed=st.name))
        out += ["# TYPE warngate_feed_failures gauge"]
        for st in gw.feeds.status.values():
            out.append(_line("warngate_feed_failures", st.failures, feed=st.name))
        out += ["# TYPE warngate_feed_entries_total counter"]
        for st in gw.feeds.status.values():
            out.append(_line("warngate_feed_entries_total", st.accepted, feed=st.name,
                             outcome="accepted"))
            out.append(_line("warngate_feed_entries_total", st.rejected, feed=st.name,
                             outcome="rejected"))
    adapter_lines = []
    for adapter in gw.adapters:
        counters = getattr(adapter, "metrics", None)
        if callable(counters):
            for event, n in sorted(counters().items()):
                adapter_lines.append(_line("warngate_adapter_events_total", n,
                                           adapter=adapter.name, event=event))
    if adapter_lines:
        out += ["# HELP warngate_adapter_events_total Provider calls, errors and webhooks "
                "as each adapter counts them.", "# TYPE warngate_adapter_events_total counter",
                *adapter_lines]
    out += ["# HELP warngate_silent_people_total People whose escalation ran out unanswered "
            "(or who had no one to call), since start.",
            "# TYPE warngate_silent_people_total counter",
            _line("warngate_silent_people_total", SILENT_COUNTS["people"]),
            "# HELP warngate_silent_alarms_total Alarm messages to duty officers listing "
            "silent people, since start.",
            "# TYPE warngate_silent_alarms_total counter",
            _line("warngate_silent_alarms_total", SILENT_COUNTS["alarms"])]
    out += ["# TYPE warngate_receipts_unknown_total counter",
            _line("warngate_receipts_unknown_total", gw.receipts.unknown)]
    return "\n".join(out) + "\n"
