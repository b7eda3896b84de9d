"""The ``warngate`` command. Exit codes: 0 ok, 1 failed, 2 usage or configuration error.

Start-up is kept short (``warngate cap validate`` is run once per file by scripts): a
command imports what it needs inside its handler, and the plugin commands' entry points
are only looked up when the command asked for is not one of ours (or for ``--help``).
Importing settings, pydantic, aiohttp, SQLAlchemy or the adapters at the top of this
module would cost every call half a second; ``tests/e2e/test_cli_startup.py`` keeps it so.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warngate.policy import Policy
    from warngate.registry.kinds import RoleNames
    from warngate.settings import Settings

log = logging.getLogger("warngate")

#: Commands built in; any other name is looked for among the plugins' commands.
BUILT_IN = ("serve", "demo", "registry", "cap", "db", "report", "duty")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The scheduler logs every job run at INFO; only its problems matter here.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings:
    from warngate.settings import load_settings

    overrides = {}
    if getattr(args, "database", None):
        overrides["database"] = {"url": args.database}
    return load_settings(getattr(args, "config", None), **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from warngate.policy import load_policy

    settings = _settings(args)
    policy = load_policy(settings.policy_file)
    return asyncio.run(serve(settings, policy))


async def serve(settings: Settings, policy: Policy) -> int:
    """Serve until SIGINT/SIGTERM (exit 0) or until the gateway stops itself (exit 1)."""
    from warngate.policy import PolicyError
    from warngate.serving import serving
    from warngate.settings import ConfigError
    from warngate.web.app import build_app

    app = build_app(settings, policy)
    try:
        async with serving(app, settings.http.host, settings.http.port) as running:
            log.info("warngate serving on http://%s:%d", settings.http.host,
                     settings.http.port)
            await running.wait()
    except (ConfigError, PolicyError):
        raise
    except Exception:
        log.critical("warngate could not start, or did not stop cleanly", exc_info=True)
        return 1
    failure = running.gateway.failure
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    log.info("warngate stopped")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from warngate.demo import run_demo

    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run_demo(port=args.port, data_dir=data_dir.resolve(), token=args.token,
                                duration=args.duration))


def _role_names(args: argparse.Namespace, settings: Settings | None) -> RoleNames:
    """The roles rosters may use: the policy's (--policy, else the configuration's policy
    file when there is a configuration), else the defaults."""
    from warngate.policy import load_policy
    from warngate.registry.kinds import RoleNames

    path = getattr(args, "policy", None)
    if path is None and settings is not None and getattr(args, "config", None):
        path = settings.policy_file
    return RoleNames(load_policy(path).declared_roles() if path else None)


def cmd_registry(args: argparse.Namespace) -> int:
    import asyncio

    from warngate import registry

    if args.action == "template":
        from warngate.registry.template import write_template

        for path in write_template(args.out):
            print(f"wrote {path}")
        return 0
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.action == "check":
        report = registry.check_files(args.files, roles=_role_names(args, None))
        print(report)
        return 0 if report.ok else 1

    async def _import() -> int:
        from warngate.store import Store

        settings = _settings(args)
        roles = _role_names(args, settings)
        store = await Store.open(settings.database.url)
        try:
            summary = await registry.import_files(store.engine, args.files, roles=roles,
                                                  replace=args.replace)
        except registry.RegistryError as exc:
            print(registry.format_issues(exc.issues), file=sys.stderr)
            print("nothing was imported", file=sys.stderr)
            return 1
        finally:
            await store.close()
        print(summary)
        return 0

    return asyncio.run(_import())


def cmd_cap(args: argparse.Namespace) -> int:
    from warngate.cap import validate_files

    bad = 0
    for result in validate_files(args.files):
        if result.ok:
            # Flaws accepted with the message are shown: "OK f.xml (2 warnings: ...; ...)".
            found = result.cap.warnings if result.cap is not None else ()
            more = f" ({len(found)} warning{'s' if len(found) > 1 else ''}: " \
                f"{'; '.join(map(str, found))})" if found else ""
            print(f"OK {result.path}{more}")
        else:
            bad += 1
            print(f"INVALID {result.path}: {result.reason}")
    return 1 if bad else 0


def cmd_db(args: argparse.Namespace) -> int:
    import asyncio

    from warngate.store import Store

    async def _upgrade() -> None:
        store = await Store.open(_settings(args).database.url)
        await store.close()

    asyncio.run(_upgrade())
    print("database schema is up to date")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The accountability report (通报) of one alert or a period, written as CSV or XLSX."""
    import asyncio

    from warngate import report
    from warngate.policy import load_policy

    fmt = args.format or args.out.suffix.lstrip(".").lower()
    if fmt not in report.FORMATS:
        print("error: --format csv|xlsx (or an --out file ending .csv or .xlsx)",
              file=sys.stderr)
        return 2
    if (args.alert is None) == (args.since is None or args.until is None):
        print("error: give --alert ID, or --from and --to", file=sys.stderr)
        return 2
    try:
        since = None if args.since is None else report.parse_day(args.since)
        until = None if args.until is None else report.parse_day(args.until)
    except report.ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = _settings(args)
    policy = load_policy(args.policy or settings.policy_file)

    async def _write(out: Any) -> tuple[Any, int]:
        from warngate.store import Store

        store = await Store.open(settings.database.url)
        try:
            made = await report.build_report(store, policy, alert_id=args.alert, since=since,
                                             until=until, township=args.township)
            if args.alert is not None and not made.alerts:
                return made, -1
            if fmt == "csv":
                return made, await report.write_csv(store, policy, made, out)
            return made, await report.write_xlsx(store, policy, made, out)
        finally:
            await store.close()

    # Opened here, not in the event loop: the people list streams into it.
    with (args.out.open("w", encoding="utf-8-sig", newline="") if fmt == "csv"
          else args.out.open("wb")) as out:
        made, listed = asyncio.run(_write(out))
    if listed < 0:
        args.out.unlink(missing_ok=True)
        print(f"error: no alert {args.alert}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {made.title}; {len(made.alerts)} alert(s), "
          f"{len(made.rows)} rows, {listed} people not answering in time")
    return 0


def cmd_duty(args: argparse.Namespace) -> int:
    """24-hour duty rosters: add or import shifts, who is on duty now, a handover."""
    import asyncio

    from warngate import duty

    async def _run() -> int:
        from warngate.store import Store

        store = await Store.open(_settings(args).database.url)
        try:
            if args.action == "add":
                n = await duty.add_shifts(store, [duty.Shift(
                    region_code=args.region, external_id=args.contact,
                    starts_at=duty.parse_time(args.since),
                    ends_at=duty.parse_time(args.until))], actor=args.by)
                print(f"已登记 {n} 个班次 (shifts recorded: {n})")
            elif args.action == "import":
                n = await duty.add_shifts(store, duty.read_csv(args.file.read_bytes()),
                                          actor=args.by)
                print(f"{args.file}: 已导入 {n} 个班次 (shifts imported: {n})")
            elif args.action == "now":
                async with store.read() as conn:
                    shifts = await duty.on_duty(conn, region=args.region)
                if not shifts:
                    print("当前无人值班 (nobody is on duty now)")
                for r in shifts:
                    print(f"{r['region_code']} {r['region'] or ''}  {r['name']} "
                          f"({r['external_id']}, {r['phone'] or '-'})  "
                          f"{r['starts']} → {r['ends']}"
                          + (f"  交接: {r['handed_over_by']}: {r['handover_note'] or ''}"
                             if r["handed_over_by"] else ""))
            else:
                shift_id = await duty.handover(store, region=args.region, to=args.to,
                                               note=args.note, by=args.by)
                print(f"已交接: {args.region} 由 {args.to} 值班 (handover recorded, "
                      f"shift {shift_id})")
        except duty.DutyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            await store.close()
        return 0

    if args.action == "import" and not args.file.is_file():
        print(f"error: no such file: {args.file}", file=sys.stderr)
        return 2
    return asyncio.run(_run())


def build_parser(*, plugins: bool = True) -> argparse.ArgumentParser:
    """The command line; ``plugins=False`` leaves out the commands of adapter packages."""
    parser = argparse.ArgumentParser(
        prog="warngate", description="Early-warning dissemination gateway.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the service on a configuration file")
    p.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="the whole path on embedded defaults (no credentials)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port on 127.0.0.1 (8080)")
    p.add_argument("--data-dir", type=Path, default=Path("var/demo"),
                   help="where the SQLite database lives (var/demo)")
    p.add_argument("--token", help="API bearer token (a random one is printed if omitted)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("registry", help="check or import rosters (CSV, Excel .xlsx, YAML)")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("check", "validate files without touching the database"),
                         ("import", "validate and import, all or nothing")):
        rp = rsub.add_parser(action, help=text)
        rp.add_argument("files", type=Path, nargs="+", metavar="FILE")
        rp.add_argument("--policy", type=Path,
                        help="policy file whose declared roles the rosters may use "
                             "(default: the configuration's, else the built-in roles)")
        if action == "import":
            rp.add_argument("--config", type=Path, help="YAML configuration (database URL)")
            rp.add_argument("--database", help="database URL (overrides the configuration)")
            rp.add_argument("--replace", action="store_true",
                            help="the files are the whole roster of their townships: "
                                 "contacts of those townships left out become inactive")
    tp = rsub.add_parser("template", help="write a blank roster workbook (.xlsx) with every "
                                          "sheet and column, or CSV files into a directory")
    tp.add_argument("out", type=Path, metavar="OUT", help="OUT.xlsx, or a directory")
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("cap", help="CAP tools")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    cp = csub.add_parser("validate", help="one line per file: OK or the reason")
    cp.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_cap)

    p = sub.add_parser("db", help="database schema")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    dp = dsub.add_parser("upgrade", help="apply migrations")
    dp.add_argument("--config", type=Path, help="YAML configuration (database URL)")
    dp.add_argument("--database", help="database URL")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("report", help="the accountability report (通报) as CSV or XLSX")
    p.add_argument("--alert", type=int, help="one alert's report")
    p.add_argument("--from", dest="since", metavar="DAY",
                   help="a period's report from this day (2026-12-01, China time) ...")
    p.add_argument("--to", dest="until", metavar="DAY", help="... until this day (excluded)")
    p.add_argument("--township", help="one township's villages only (its code)")
    p.add_argument("--format", choices=["csv", "xlsx"], help="default: from --out")
    p.add_argument("--out", type=Path, required=True, help="the file to write")
    p.add_argument("--config", type=Path, help="YAML configuration (database, policy)")
    p.add_argument("--database", help="database URL (overrides the configuration)")
    p.add_argument("--policy", type=Path, help="policy file (deadlines, role names)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("duty", help="24-hour duty rosters (值班): shifts, who is on duty, "
                                    "handovers")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    da = dsub.add_parser("add", help="one shift")
    da.add_argument("--region", required=True, help="township or county code")
    da.add_argument("--contact", required=True, metavar="EXTERNAL_ID",
                    help="the duty officer's external id in the roster")
    da.add_argument("--from", dest="since", required=True, metavar="ISO",
                    help="start, ISO 8601 (China time without an offset)")
    da.add_argument("--to", dest="until", required=True, metavar="ISO", help="end, ISO 8601")
    di = dsub.add_parser("import", help="shifts from a CSV file (区域编码/region_code, "
                                        "值班人/external_id, 开始/starts_at, 结束/ends_at)")
    di.add_argument("file", type=Path, metavar="FILE.csv")
    dn = dsub.add_parser("now", help="who is on duty now")
    dn.add_argument("--region", help="a township, or a county and its townships")
    dh = dsub.add_parser("handover", help="hand the region's duty over now")
    dh.add_argument("--region", required=True, help="township or county code")
    dh.add_argument("--to", required=True, metavar="EXTERNAL_ID", help="who takes over")
    dh.add_argument("--note", default="", help="what the outgoing officer hands over")
    for dp_ in (da, di, dn, dh):
        if dp_ is not dn:
            dp_.add_argument("--by", required=dp_ is dh, default="cli",
                             help="who records it (the outgoing officer, for a handover)")
        dp_.add_argument("--config", type=Path, help="YAML configuration (database URL)")
        dp_.add_argument("--database", help="database URL (overrides the configuration)")
    p.set_defaults(func=cmd_duty)

    if plugins:
        _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adapter distributions add their own commands (e.g. speaker-sim)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="warngate.commands"):
        try:
            ep.load()(sub)
        except Exception as exc:
            log.warning("command %s from %s could not load: %s", ep.name, ep.value, exc)


def _command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``: its first word that is not an option (``-v``, the
    only option before the command, takes no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _usage_error(exc: Exception) -> bool:
    """Whether ``exc`` is a configuration or policy error (exit 2, no traceback).

    Their classes live with the models that raise them; a command that never loaded those
    modules cannot have raised them, and importing them here would cost every call the
    pydantic start-up.
    """
    for module, name in (("warngate.settings", "ConfigError"), ("warngate.policy",
                                                                  "PolicyError")):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(plugins=_command(argv) not in BUILT_IN)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _usage_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
