"""``warngate speaker-sim``: simulated loudspeakers on a broker, for the demo and load tests.

Registered in the entry-point group ``warngate.commands``; ``warngate.cli`` calls
:func:`add_command` with its sub-command parser.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from warngate.waiting import wait_set
from warngate_mqtt.speaker_sim import Behaviour, SpeakerSimulator
from warngate_mqtt.topics import DEFAULT_PREFIX, TopicError, check_speaker_id

PASSWORD_ENV = "WARNGATE_SPEAKER_PASSWORD"


def _broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, 1883
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not between 0 and 1")
    return rate


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("seconds cannot be negative")
    return seconds


def add_command(sub: Any) -> None:
    """Add ``speaker-sim`` to the ``warngate`` command's sub-parsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "speaker-sim", help="simulated loudspeakers on an MQTT broker (demo, load tests)",
        description="Connect N simulated loudspeakers to an MQTT broker. Each uses its "
                    "speaker id as MQTT user name and client id, publishes a retained "
                    "'online' status (last will 'offline') and answers commands "
                    "received -> playing -> played.")
    p.add_argument("--broker", type=_broker, default=("127.0.0.1", 1883), metavar="HOST:PORT",
                   help="the broker (127.0.0.1:1883)")
    p.add_argument("--count", type=int, default=10, help="how many speakers (10)")
    p.add_argument("--id-prefix", "--username-prefix", dest="id_prefix", default="spk-",
                   help="speaker ids (= user names) are this prefix and a number (spk-)")
    p.add_argument("--ids", type=Path, metavar="FILE",
                   help="one speaker id per line, instead of --count/--id-prefix")
    p.add_argument("--database", metavar="URL",
                   help="simulate the registry's speakers: read their ids from this "
                        "database (e.g. sqlite+aiosqlite:///var/demo/warngate.db)")
    p.add_argument("--password",
                   help=f"password of every speaker (or set {PASSWORD_ENV})")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix ({DEFAULT_PREFIX})")
    p.add_argument("--offline-rate", type=_rate, default=0.0,
                   help="share of speakers that are switched off (0)")
    p.add_argument("--fail-rate", type=_rate, default=0.0,
                   help="share of commands that fail to play (0)")
    p.add_argument("--play-seconds", type=_seconds, default=5.0,
                   help="seconds one play lasts (5)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same behaviour (0)")
    p.add_argument("--ca-file", type=Path, help="use TLS, trusting this CA file")
    p.add_argument("--duration", type=_seconds, help="stop after this many seconds")
    p.set_defaults(func=run)


def speaker_ids(args: argparse.Namespace) -> list[str]:
    """The ids to simulate, or SystemExit(2) with the reason."""
    if args.ids is not None and args.database:
        raise SystemExit(_usage("give --ids or --database, not both"))
    if args.database:
        ids = asyncio.run(_registry_ids(args.database))
        if not ids:
            raise SystemExit(_usage(f"no speakers in the registry at {args.database}"))
    elif args.ids is not None:
        try:
            lines = args.ids.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SystemExit(_usage(f"cannot read {args.ids}: {exc.strerror}")) from None
        ids = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    else:
        if args.count < 1:
            raise SystemExit(_usage("--count must be at least 1"))
        width = max(5, len(str(args.count)))
        ids = [f"{args.id_prefix}{i:0{width}d}" for i in range(1, args.count + 1)]
    for n, sid in enumerate(ids, 1):
        try:
            check_speaker_id(sid)
        except TopicError as exc:
            where = f"{args.ids}:{n}: " if args.ids is not None else ""
            raise SystemExit(_usage(f"{where}{exc}")) from None
    if len(set(ids)) != len(ids):
        raise SystemExit(_usage("speaker ids repeat"))
    return ids


async def _registry_ids(url: str) -> list[str]:
    # Read-only: no migrations run against someone's database.
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine

    from warngate.store.schema import speakers

    try:
        engine = create_async_engine(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise SystemExit(_usage(f"--database {url}: {exc}")) from None
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(
                select(speakers.c.id).order_by(speakers.c.id))).scalars())
    except (SQLAlchemyError, OSError) as exc:
        raise SystemExit(_usage(f"--database {url}: cannot read speakers: "
                                f"{str(exc).splitlines()[0]}")) from None
    finally:
        await engine.dispose()


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    ids = speaker_ids(args)
    tls = None
    if args.ca_file is not None:
        import ssl
        try:
            tls = ssl.create_default_context(cafile=str(args.ca_file))
        except (OSError, ssl.SSLError) as exc:
            return _usage(f"--ca-file {args.ca_file}: {exc}")
    behaviour = Behaviour(play_seconds=args.play_seconds, fail_rate=args.fail_rate,
                          offline_rate=args.offline_rate, seed=args.seed)
    password = args.password or os.environ.get(PASSWORD_ENV) or None
    host, port = args.broker
    sim = SpeakerSimulator(host=host, port=port, speaker_ids=ids, prefix=args.prefix,
                           password=password, tls=tls, behaviour=behaviour)
    try:
        return asyncio.run(_serve(sim, args.duration))
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _serve(sim: SpeakerSimulator, duration: float | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with sim:
        off = sum(1 for s in sim.speakers.values() if s.switched_off)
        print(f"{len(sim.speakers)} speakers on {sim.host}:{sim.port} under "
              f"{sim.topics.prefix}/speakers/ ({off} switched off); Ctrl-C stops", flush=True)
        started = time.monotonic()
        last = None
        while not stop.is_set():
            wait = 5.0
            if duration is not None:
                wait = max(0.0, min(wait, duration - (time.monotonic() - started)))
            await wait_set(stop, wait)
            c = sim.counts()
            line = (f"commands {c['commands']}  played {c['played']}  failed {c['failed']}  "
                    f"repeats {c['duplicates']}  malformed {c['malformed']}")
            if line != last:
                print(line, flush=True)
                last = line
            if duration is not None and time.monotonic() - started >= duration:
                break
    return 0
