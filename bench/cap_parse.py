"""CAP messages parsed and validated per second (schema + rules), over real samples.

    .venv/bin/python bench/cap_parse.py [--runs 5] [--seconds 2]

Uses ../shared/data/cap/valid when present, else the project's own fixtures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from warngate.cap import parse_cap

ROOT = Path(__file__).resolve().parents[1]


def samples() -> list[bytes]:
    shared = ROOT.parent / "shared" / "data" / "cap" / "valid"
    files = sorted(shared.rglob("*.xml")) if shared.is_dir() else []
    if not files:
        files = [ROOT / "tests" / "fixtures" / "cap" / n
                 for n in ("red-rainstorm-zh-en.xml", "update.xml", "cancel.xml")]
    return [f.read_bytes() for f in files]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    data = samples()
    size = sum(map(len, data)) / len(data)
    rates = []
    for run in range(args.runs):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            for d in data:
                parse_cap(d)
            n += len(data)
        rate = n / (time.perf_counter() - start)
        rates.append(rate)
        print(f"run {run + 1}: {rate:,.0f} messages/s")
    print(f"{len(data)} samples, mean {size / 1024:.1f} KiB: median {statistics.median(rates):,.0f}"
          f" CAP messages parsed and validated per second (1 process)")


if __name__ == "__main__":
    main()
