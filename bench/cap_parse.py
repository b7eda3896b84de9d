"""CAP messages validated per second: warngate beside the WMO's capvalidator, same files, same
process, medians of several runs.

    .venv/bin/python bench/cap_parse.py [--runs 3] [--seconds 2]

Files: ../shared/data/cap (valid, legacy, invalid, signature-tampered; not the feeds) and
tests/fixtures/cap. Two sets are timed: the 28 real valid messages (shared/valid) and every
file. warngate's figure is ``parse_cap``: the one hardened parse, the OASIS schema, the rules
and the model (no signature check: that is per sender, see warngate/cap/signature.py).
capvalidator (``pip install capvalidator``) is timed as ``check_schema`` (parse + schema, the
like-for-like figure) and as ``validate_cap_message(strict=False)`` (schema, then its
signature check). A refused message counts as validated for both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from warngate.cap import CapError, parse_cap

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "cap"


def files() -> dict[str, list[bytes]]:
    valid = sorted((SHARED / "valid").rglob("*.xml")) if SHARED.is_dir() else []
    every = sorted(p for sub in ("valid", "legacy", "invalid", "signature-tampered")
                   for p in (SHARED / sub).rglob("*.xml")) if SHARED.is_dir() else []
    every += sorted((ROOT / "tests" / "fixtures" / "cap").glob("*.xml"))
    # Documents with a DTD are left out for both: capvalidator's parser is not hardened, and
    # billion-laughs.xml crashes its process (SIGSEGV in libxml2) within a few calls.
    hostile = [p for p in every if b"<!DOCTYPE" in p.read_bytes()]
    if hostile:
        print(f"left out for both (a DTD; capvalidator is not hardened against them): "
              f"{', '.join(p.name for p in hostile)}")
    every = [p for p in every if p not in hostile]
    sets = {f"{len(every)} files (shared + fixtures)": [p.read_bytes() for p in every]}
    if valid:
        sets = {f"{len(valid)} real valid messages": [p.read_bytes() for p in valid], **sets}
    return sets


def warngate_parse(data: bytes) -> None:
    with contextlib.suppress(CapError):  # a refusal is a message handled too
        parse_cap(data)


def validators() -> tuple[dict[str, Callable[[bytes], object]], str]:
    found: dict[str, Callable[[bytes], object]] = {"warngate parse_cap": warngate_parse}
    try:
        import capvalidator
    except ImportError:
        return found, ("capvalidator is not installed (.venv/bin/pip install capvalidator; "
                       "it is on PyPI as 0.1.0.dev4): warngate alone")

    def schema_only(data: bytes) -> object:
        return capvalidator.check_schema(data)

    def with_signature(data: bytes) -> object:
        try:
            return capvalidator.validate_cap_message(data, strict=False)
        except Exception as exc:  # it raises on some inputs; still one message handled
            return exc

    found["capvalidator check_schema"] = schema_only
    found["capvalidator validate (strict=False)"] = with_signature
    return found, f"capvalidator {getattr(capvalidator, '__version__', '?')} (PyPI)"


def rate(fn: Callable[[bytes], object], data: list[bytes], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for d in data:
            fn(d)
        n += len(data)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    # Old, expired certificates in the samples make cryptography warn on every check.
    warnings.simplefilter("ignore")
    found, note = validators()
    print(note)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
          f"{args.runs} runs of {args.seconds:g} s each, interleaved; median messages/s")
    for label, data in files().items():
        for fn in found.values():  # warm up: schemas loaded, imports done
            for d in data:
                fn(d)
        rates: dict[str, list[float]] = {name: [] for name in found}
        for _ in range(args.runs):
            for name, fn in found.items():
                rates[name].append(rate(fn, data, args.seconds))
        size = sum(map(len, data)) / len(data) / 1024
        print(f"\n{label}, mean {size:.1f} KiB:")
        ours = statistics.median(rates["warngate parse_cap"])
        for name, values in rates.items():
            median = statistics.median(values)
            vs = "" if name.startswith("warngate") else f"  (warngate {ours / median:.2f}x)"
            runs = ", ".join(f"{v:,.0f}" for v in values)
            print(f"  {name:<38} {median:>8,.0f}/s  [{runs}]{vs}")


if __name__ == "__main__":
    main()
