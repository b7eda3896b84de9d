"""``warngate speaker-sim`` as a user runs it: speakers that answer the gateway's adapter on
the machine's Mosquitto, ids from the registry, and clear usage errors."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from pathlib import Path

import aiomqtt
import pytest
from warngate_mqtt import MqttSpeakerAdapter

from tests.mosquitto import system_mosquitto
from tests.smallcounty import write_small_county
from warngate.adapter import Outbound
from warngate.settings import AdapterSettings
from warngate.store import Store
from warngate.testing import RecordingSink

pytestmark = pytest.mark.mqtt


async def warngate(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warngate", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finished(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def clear_statuses(host: str, port: int, prefix: str, ids: list[str]) -> None:
    """Leave nothing retained on the shared broker (and end the speakers' sessions)."""
    for sid in ids:
        async with aiomqtt.Client(host, port, username=sid, identifier=sid, clean_start=True,
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.publish(f"{prefix}/speakers/{sid}/status", b"", qos=1, retain=True)


async def test_simulated_speakers_answer_the_adapter(tmp_path: Path) -> None:
    host, port = system_mosquitto()
    tag = uuid.uuid4().hex[:10]
    prefix = f"test/warngate/{tag}"
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# two speakers\nspk-{tag}-甲\n\nspk-{tag}-乙\n", encoding="utf-8")
    proc = await warngate("speaker-sim", "--broker", f"{host}:{port}", "--ids", str(ids),
                          "--prefix", prefix, "--play-seconds", "0", "--duration", "60")
    adapter = MqttSpeakerAdapter(AdapterSettings(
        name="speaker", type="mqtt-speaker", channel="speaker",
        options={"host": host, "port": port, "prefix": prefix, "client_id": f"gw-{tag}",
                 "session_expiry": 10}))
    sink = RecordingSink()
    names = [f"spk-{tag}-甲", f"spk-{tag}-乙"]
    await adapter.start(sink)
    try:
        await sink.wait_for(lambda s: {sid for sid, on in s.statuses if on} == set(names),
                            within=30)
        for did, sid in enumerate(names, 1):
            await adapter.send(Outbound(delivery_id=did, alert_id=1, kind="alert",
                                        channel="speaker", address=sid, level="orange",
                                        headline="大风橙色预警", text="请加固门窗。"))
        await sink.wait_for(lambda s: len(s.acks) == 2, within=30)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code, out, err = await finished(proc)
        # Leaving, each speaker says it is offline.
        await sink.wait_for(lambda s: {sid for sid, on in s.statuses if not on} == set(names))
    finally:
        await adapter.stop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await clear_statuses(host, port, prefix, names)
    assert code == 0, err
    assert f"2 speakers on {host}:{port} under {prefix}/speakers/" in out
    assert "commands 2  played 2  failed 0" in out


async def test_ids_from_the_registry(tmp_path: Path) -> None:
    host, port = system_mosquitto()
    url = f"sqlite+aiosqlite:///{tmp_path / 'warngate.db'}"
    store = await Store.open(url)
    try:
        await write_small_county(store, townships=1, villages=2, grids=1, households=0)
    finally:
        await store.close()
    prefix = f"test/warngate/{uuid.uuid4().hex[:10]}"
    code, out, err = await finished(await warngate(
        "speaker-sim", "--broker", f"{host}:{port}", "--database", url,
        "--prefix", prefix, "--duration", "0"))
    await clear_statuses(host, port, prefix, ["spk-339901001001", "spk-339901001002"])
    assert code == 0, err
    assert "2 speakers on" in out


@pytest.mark.parametrize(("args", "says"), [
    (["--count", "0"], "--count must be at least 1"),
    (["--broker", "host:port"], "is not HOST:PORT"),
    (["--fail-rate", "1.5"], "is not between 0 and 1"),
    (["--id-prefix", "a/b"], "contains '/'"),
    (["--ids", "/nonexistent/ids.txt"], "cannot read /nonexistent/ids.txt"),
    (["--database", "sqlite+aiosqlite:////nonexistent/x.db"], "cannot read speakers"),
])
async def test_usage_errors_exit_2_and_say_why(args: list[str], says: str) -> None:
    code, _, err = await finished(await warngate("speaker-sim", *args))
    assert code == 2
    assert says in err
