"""`warngate cap validate FILE` starts without what it does not use.

Scripts run it once per file, so its start-up is most of its cost: it must not import the
web stack, the database layer, the scheduler, the adapters (their entry points are not even
looked up), the settings models, or shapely and numpy (a polygon's ring is checked in pure
Python: warngate/cap/rings.py). A behavioural check on the modules imported (``-X
importtime`` lists each module the first time it is imported), not a timing test.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.unit.test_cap_leniency import area, cap_doc

ROOT = Path(__file__).resolve().parents[2]
SHARED_CAP = ROOT.parent / "shared" / "data" / "cap" / "valid"
#: Imported by a command that serves, stores or configures — never by ``cap validate``.
HEAVY = ("aiohttp", "sqlalchemy", "alembic", "apscheduler", "twilio", "aiomqtt", "pydantic",
         "pydantic_settings", "yaml", "openpyxl", "warngate_mqtt", "warngate_twilio",
         "warngate.settings", "warngate.policy", "warngate.adapter", "warngate.store",
         "importlib.metadata", "shapely", "numpy")


def _run(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -m warngate ARGS``: the process (stderr without the import listing)
    and the modules it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "warngate", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    listing = [line for line in done.stderr.splitlines(keepends=True)
               if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[1].strip() for line in listing if "|" in line}
    done.stderr = "".join(line for line in done.stderr.splitlines(keepends=True)
                          if not line.startswith("import time:"))
    return done, imported


def _heavy(imported: set[str]) -> list[str]:
    return sorted(m for m in imported if m.split(".")[0] in HEAVY or m in HEAVY
                  or any(m.startswith(h + ".") for h in HEAVY))


def _sample() -> Path:
    shared = sorted(SHARED_CAP.glob("*.xml")) if SHARED_CAP.is_dir() else []
    return shared[0] if shared else ROOT / "tests" / "fixtures" / "cap" / "update.xml"


def test_cap_validate_imports_nothing_heavy() -> None:
    sample = _sample()
    done, imported = _run("cap", "validate", str(sample))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"OK {sample}")
    assert "warngate.cap.parse" in imported  # the listing is real: it saw the parser load
    assert _heavy(imported) == []


def test_cap_validate_checks_polygons_without_shapely(tmp_path: Path) -> None:
    # Two polygons: a square, and a bow tie (its ring crosses itself, so the check runs in
    # full and says so).
    square = "30.0,120.0 30.0,120.1 30.1,120.1 30.1,120.0 30.0,120.0"
    bow_tie = "30.0,120.0 30.1,120.1 30.0,120.1 30.1,120.0 30.0,120.0"
    flawed = tmp_path / "polygons.xml"
    flawed.write_bytes(cap_doc(areas=[area(polygons=[square, bow_tie])]))
    done, imported = _run("cap", "validate", str(flawed))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"OK {flawed} (1 warning: polygon-self-intersecting at ")
    assert "warngate.cap.rings" in imported
    assert _heavy(imported) == []


def test_plugin_commands_still_offered() -> None:
    """Entry points are looked up when the command is not a built-in one, and for help."""
    plugins = [ep.name for ep in entry_points(group="warngate.commands")]
    if not plugins:
        pytest.skip("no adapter package with commands is installed")
    done, _ = _run("--help")
    assert done.returncode == 0 and all(name in done.stdout for name in plugins)
    done, _ = _run(plugins[0], "--help")
    assert done.returncode == 0, done.stderr


def test_a_configuration_error_is_still_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "warngate.yaml"
    config.write_text("database: [not, a, mapping]\n", encoding="utf-8")
    done, _ = _run("db", "upgrade", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
