"""MQTT benchmark: the ``mqtt-speaker`` adapter publishing QoS 1 commands to a real Mosquitto
on loopback (a private instance running the shipped ``config/mosquitto``, with passwords and
the ACL), and command → ack round trips with the speaker simulator.

    .venv/bin/python bench/mqtt_publish.py                  # everything, 5 runs, medians
    .venv/bin/python bench/mqtt_publish.py adapter native -n 50000 --concurrency 1000
    .venv/bin/python bench/mqtt_publish.py acks --speakers 1000

Sections (each prints every run, then the median):

- ``adapter``: ``MqttSpeakerAdapter.send`` from ``--concurrency`` concurrent callers (as a
  dispatch lane does): command JSON encoded, published QoS 1, returned on PUBACK. Reports
  publishes per second, this process's CPU (user + system, ``getrusage``) and the broker's.
- ``native``: the same commands through aiomqtt's own ``Client.publish`` (one awaited call
  per message, concurrency bounded by a semaphore): the reason the adapter does not use it.
- ``acks``: round trips: commands to ``--speakers`` simulated speakers (in their own
  process, each speaker its own connection) until every ``played`` ack is back; reports
  commands and acks per second and the CPU of gateway, speakers and broker.
- ``ackload``: the gateway side of acks alone: 50 speakers' connections in another process
  publish ``played`` acks (QoS 1) as fast as they can; reports acks per second taken in by
  the adapter (parsed, checked, handed to the receipt sink) and its CPU per ack.

On two cores the broker and this process share the machine: neither has a core to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
from warngate_mqtt import MqttSpeakerAdapter
from warngate_mqtt.payloads import command_for
from warngate_mqtt.speaker_sim import Behaviour, SpeakerSimulator
from warngate_mqtt.testing import GATEWAY_USER, Mosquitto, throwaway_mosquitto
from warngate_mqtt.topics import Topics

from warngate.adapter import Outbound
from warngate.settings import AdapterSettings

#: The broker runs what the repository ships (config/mosquitto), ACL included.
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config" / "mosquitto"
GW_PASSWORD = "bench-gateway"
SPEAKER_PASSWORD = "bench-speaker"
HEADLINE = "夏溪县气象台发布暴雨红色预警"
BODY = ("预计未来3小时内夏溪县大部地区将出现50毫米以上降水，局地可达100毫米，"
        "请立即组织危险区域群众转移，注意防范山洪、地质灾害。")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def message(i: int, speakers: int) -> Outbound:
    return Outbound(delivery_id=i, alert_id=1, kind="alert", channel="speaker",
                    address=f"spk-{i % speakers:05d}", level="red", headline=HEADLINE,
                    text=BODY)


def adapter_for(broker: Mosquitto, **options: Any) -> MqttSpeakerAdapter:
    os.environ["WARNGATE_MQTT_PASSWORD"] = GW_PASSWORD
    return MqttSpeakerAdapter(AdapterSettings(
        name="speaker", type="mqtt-speaker", channel="speaker",
        options={"host": broker.host, "port": broker.port, "username": GATEWAY_USER,
                 "client_id": "bench-gateway", "ack_timeout": None, **options}))


async def measure(broker: Mosquitto, n: int, concurrency: int,
                  one: Callable[[Outbound], Coroutine[Any, Any, None]],
                  speakers: int) -> dict[str, float]:
    outbound = [message(i, speakers) for i in range(1, n + 1)]
    for m in outbound[:500]:  # warm up
        await one(m)
    pending = iter(outbound)

    async def worker() -> None:
        for m in pending:
            await one(m)

    b0, c0, t0 = proc_cpu(broker.pid), cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    used, broker_used = cpu() - c0, proc_cpu(broker.pid) - b0
    return {"per_s": n / elapsed, "cpu_pct": 100 * used / elapsed, "cpu_us": 1e6 * used / n,
            "broker_pct": 100 * broker_used / elapsed}


async def adapter_publishes(broker: Mosquitto, n: int, concurrency: int,
                            speakers: int) -> dict[str, float]:
    adapter = adapter_for(broker)
    await adapter.start(_NullSink())
    try:
        async def one(m: Outbound) -> None:
            await adapter.send(m)

        out = await measure(broker, n, concurrency, one, speakers)
        out["window"] = float(adapter.link.window)  # what the broker allowed
        return out
    finally:
        await adapter.stop()


async def native_publishes(broker: Mosquitto, n: int, concurrency: int,
                           speakers: int) -> dict[str, float]:
    topics = Topics()
    async with aiomqtt.Client(broker.host, broker.port, username=GATEWAY_USER,
                              password=GW_PASSWORD, identifier="bench-native",
                              protocol=aiomqtt.ProtocolVersion.V5,
                              max_inflight_messages=concurrency) as client:
        client.pending_calls_threshold = 10**9  # else it logs a warning per publish

        async def one(m: Outbound) -> None:
            await client.publish(topics.cmd(m.address), command_for(m).encode(), qos=1)

        return await measure(broker, n, concurrency, one, speakers)


class _NullSink:
    def receipt(self, **kw: Any) -> None: ...
    def acknowledge(self, **kw: Any) -> None: ...
    def speaker_status(self, speaker_id: str, *, online: bool) -> None: ...


class _CountingSink(_NullSink):
    def __init__(self) -> None:
        self.acks = 0
        self.played = 0
        self.done = asyncio.Event()
        self.target = 0

    def receipt(self, **kw: Any) -> None:
        self.acks += 1

    def acknowledge(self, **kw: Any) -> None:
        self.played += 1
        if self.played >= self.target:
            self.done.set()


# -- round trips with the simulator in its own process ----------------------------------------

def _speakers_main(port: int, count: int, ready: Any, stop: Any) -> None:
    async def main() -> None:
        ids = [f"spk-{i:05d}" for i in range(count)]
        async with SpeakerSimulator(host="127.0.0.1", port=port, speaker_ids=ids,
                                    password=SPEAKER_PASSWORD, behaviour=Behaviour(),
                                    session_expiry=60, clear_retained=True):
            ready.set()
            await asyncio.to_thread(stop.wait)

    asyncio.run(main())


@contextlib.contextmanager
def speakers_process(port: int, count: int) -> Any:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_speakers_main, args=(port, count, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("the speaker simulator did not start")
        yield proc
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.terminate()


async def round_trips(broker: Mosquitto, n: int, concurrency: int, speakers: int,
                      sim_pid: int, run: int) -> dict[str, float]:
    adapter = adapter_for(broker)
    sink = _CountingSink()
    await adapter.start(sink)
    try:
        # New delivery ids each run: a speaker does not replay a command it has played.
        first = run * n + 1
        outbound = [message(i, speakers) for i in range(first, first + n)]
        sink.target = n
        pending = iter(outbound)

        async def worker() -> None:
            for m in pending:
                await adapter.send(m)

        s0, b0, c0, t0 = (proc_cpu(sim_pid), proc_cpu(broker.pid), cpu(),
                          time.perf_counter())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed = time.perf_counter() - t0
        used = cpu() - c0
        return {"per_s": n / elapsed, "acks_per_s": sink.acks / elapsed,
                "cpu_pct": 100 * used / elapsed,
                "sim_pct": 100 * (proc_cpu(sim_pid) - s0) / elapsed,
                "broker_pct": 100 * (proc_cpu(broker.pid) - b0) / elapsed}
    finally:
        await adapter.stop()


# -- acks coming in, alone ----------------------------------------------------------------------

def _ack_blaster_main(port: int, n: int, speakers: int, go: Any, done: Any) -> None:
    from warngate_mqtt.connection import BrokerAddress, Link, LinkConfig
    from warngate_mqtt.payloads import Ack

    async def main() -> None:
        topics = Topics()
        links = [Link(LinkConfig(broker=BrokerAddress("127.0.0.1", port, username=f"spk-{i:05d}",
                                                      password=SPEAKER_PASSWORD),
                                 client_id=f"spk-{i:05d}", quiet=True))
                 for i in range(speakers)]
        tasks = [asyncio.create_task(link.run()) for link in links]
        for link in links:
            await link.connected.wait()
        await asyncio.to_thread(go.wait)
        pending = iter(range(1, n + 1))

        async def worker(link: Link, sid: str) -> None:
            for did in pending:
                await link.publish(topics.ack(sid), Ack(did, None, "played").encode())

        await asyncio.gather(*(worker(link, f"spk-{i:05d}") for i, link in enumerate(links)
                               for _ in range(20)))
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


async def acks_in(broker: Mosquitto, n: int) -> dict[str, float]:
    adapter = adapter_for(broker)
    sink = _CountingSink()
    sink.target = n
    await adapter.start(sink)
    ctx = mp.get_context("spawn")
    go, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_ack_blaster_main, args=(broker.port, n, 50, go, done),
                       daemon=True)
    proc.start()
    try:
        await asyncio.sleep(3)  # let its 50 connections come up
        assert proc.pid is not None
        p0, b0, c0, t0 = proc_cpu(proc.pid), proc_cpu(broker.pid), cpu(), time.perf_counter()
        go.set()
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed, used = time.perf_counter() - t0, cpu() - c0
        return {"per_s": n / elapsed, "cpu_pct": 100 * used / elapsed, "cpu_us": 1e6 * used / n,
                "pub_pct": 100 * (proc_cpu(proc.pid) - p0) / elapsed,
                "broker_pct": 100 * (proc_cpu(broker.pid) - b0) / elapsed}
    finally:
        await asyncio.to_thread(done.wait, 30)
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
        await adapter.stop()


# -- driver -----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def broker_for(speakers: int) -> AsyncIterator[Mosquitto]:
    users = {GATEWAY_USER: GW_PASSWORD,
             **{f"spk-{i:05d}": SPEAKER_PASSWORD for i in range(speakers)}}
    async with throwaway_mosquitto(users, config_dir=SHIPPED_CONFIG) as broker:
        yield broker


def median_line(name: str, runs: list[dict[str, float]], fmt: Callable[[dict[str, float]],
                str]) -> list[str]:
    lines = [f"  run {i + 1}: {fmt(r)}" for i, r in enumerate(runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    lines.append(f"  median {name}: {fmt(med)}")
    return lines


async def bench(section: str, args: argparse.Namespace) -> list[str]:
    if section == "acks":
        async with broker_for(args.speakers) as broker:
            with speakers_process(broker.port, args.speakers) as proc:
                assert proc.pid is not None
                runs = [await round_trips(broker, args.acks_n, args.concurrency,
                                          args.speakers, proc.pid, run)
                        for run in range(args.runs)]
        return median_line("round trips", runs, lambda r: (
            f"{r['per_s']:,.0f} commands/s played ({r['acks_per_s']:,.0f} acks/s), "
            f"gateway CPU {r['cpu_pct']:.0f}%, speakers {r['sim_pct']:.0f}%, "
            f"broker {r['broker_pct']:.0f}%"))
    if section == "ackload":
        async with broker_for(50) as broker:
            runs = [await acks_in(broker, args.acks_n) for _ in range(args.runs)]
        return median_line("acks taken in", runs, lambda r: (
            f"{r['per_s']:,.0f} acks/s, gateway CPU {r['cpu_pct']:.0f}% ({r['cpu_us']:.0f} µs "
            f"each), publishers {r['pub_pct']:.0f}%, broker {r['broker_pct']:.0f}%"))
    fn = adapter_publishes if section == "adapter" else native_publishes
    async with broker_for(0) as broker:
        runs = [await fn(broker, args.n, args.concurrency, 10_000) for _ in range(args.runs)]
    return median_line(f"{section} QoS 1 publishes", runs, lambda r: (
        f"{r['per_s']:,.0f}/s, CPU {r['cpu_pct']:.0f}% ({r['cpu_us']:.0f} µs each), "
        f"broker {r['broker_pct']:.0f}%"
        + (f", window {r['window']:.0f}" if "window" in r else "")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*",
                        help="adapter, native, acks, ackload (default: all)")
    parser.add_argument("-n", type=int, default=50_000, help="publishes per run")
    parser.add_argument("--acks-n", type=int, default=20_000, help="round trips per run")
    parser.add_argument("--concurrency", type=int, default=500,
                        help="concurrent senders (a lane's concurrency)")
    parser.add_argument("--speakers", type=int, default=500, help="simulated speakers")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--uvloop", action="store_true",
                        help="run the gateway side on uvloop (pip install uvloop)")
    args = parser.parse_args()
    known = ["adapter", "native", "acks", "ackload"]
    unknown = set(args.sections) - set(known)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from {', '.join(known)}")
    print(f"mqtt bench: {os.cpu_count()} cores, Mosquitto on loopback (shipped config), "
          f"loop {'uvloop' if args.uvloop else 'asyncio'}, {args.runs} runs each, "
          f"concurrency {args.concurrency}")
    for section in args.sections or known:
        print(f"[{section}]", flush=True)
        if args.uvloop:
            import uvloop  # optional

            lines = uvloop.run(bench(section, args))
        else:
            lines = asyncio.run(bench(section, args))
        for line in lines:
            print(line, flush=True)


if __name__ == "__main__":
    main()
