"""`practice-sync run | transform | sql | demo`: argument parsing and messages only.

A scheduler reads the exit code and a person reads one sentence; a traceback is shown only with
`--debug`, because nobody can act on one at 3 a.m.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from practice_sync import interrupt, logs
from practice_sync.errors import ConfigError, ExitCode, find_cause, is_expected
from practice_sync.report import RunReport

SOURCE_NAMES = ("bizstim", "timetap")
DEMO_QUERY = (
    "select status, count(*) as sessions, min(start_utc) as first_utc, max(start_utc) as last_utc "
    "from analytics.sessions group by status order by sessions desc"
)
DATABASE_HELP = "DuckDB file (default: DESTINATION__DUCKDB__CREDENTIALS)"


def _common() -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand (`practice-sync run --debug` works)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logs",
    )
    common.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=argparse.SUPPRESS,
        help="text (default): a UTC timestamp and a level on every line; json: one object a line",
    )
    common.add_argument(
        "--config-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the folder holding config.toml and secrets.toml (default: ./.dlt); relative "
        "warehouse paths in it are read from its parent folder",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="practice-sync",
        description="Load Bizstim and TimeTap booking data into DuckDB and build `analytics`.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    _add_run(commands, common)

    transform_cmd = commands.add_parser(
        "transform", parents=[common], help="bring analytics up to date with loaded data"
    )
    transform_cmd.add_argument("--database", help=DATABASE_HELP)
    transform_cmd.add_argument(
        "--full-rebuild",
        action="store_true",
        help="rebuild every analytics table from all raw rows instead of only what changed",
    )
    transform_cmd.add_argument(
        "--wait-for-lock",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="wait this long (e.g. 30s, 10m, 1h) for a run to release the warehouse",
    )

    sql = commands.add_parser(
        "sql", parents=[common], help="run one read-only query on the serving file, print it"
    )
    sql.add_argument("query", help='e.g. "select count(*) from analytics.sessions"')
    sql.add_argument(
        "--database", help="a DuckDB file to query (default: the warehouse's serving file)"
    )

    demo = commands.add_parser(
        "demo", parents=[common], help="load the built-in simulator into a local DuckDB file"
    )
    demo.add_argument(
        "--dir", default="demo", help="where the demo warehouse goes (default: ./demo)"
    )
    demo.add_argument(
        "--sessions", type=int, default=5000, help="simulated sessions (default 5000)"
    )
    demo.add_argument(
        "--clients", type=int, default=500, help="simulated TimeTap clients (default 500)"
    )
    from practice_sync import docs, html_report, status  # light: duckdb is imported when they run

    status.add_command(commands, common)
    html_report.add_command(commands, common)
    docs.add_command(commands, common)
    return parser


def _add_run(commands: Any, common: argparse.ArgumentParser) -> None:
    run_cmd = commands.add_parser(
        "run", parents=[common], help="load every configured source, then transform"
    )
    run_cmd.add_argument(
        "--source", choices=SOURCE_NAMES, action="append", help="only this source (repeatable)"
    )
    run_cmd.add_argument(
        "--allow-deletions",
        action="store_true",
        help="retire records that vanished upstream even when unusually many did",
    )
    run_cmd.add_argument("--database", help=DATABASE_HELP)
    run_cmd.add_argument("--quiet", action="store_true", help="no progress lines")
    run_cmd.add_argument(
        "--full-refresh",
        action="store_true",
        help="reload the sources (or those named by --source) from scratch; readers keep the "
        "serving file of the last night until the new load and rebuild are complete",
    )
    run_cmd.add_argument(
        "--wait-for-lock",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="wait this long (e.g. 30s, 10m, 1h) for another run to release the warehouse",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("practice-sync")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def _duration(text: str) -> float:
    """`90`, `30s`, `10m`, `1h` as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 10m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _use_config_dir(folder: str) -> None:
    """Point dlt at another settings folder before it is imported (cron runs without `cd`)."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--config-dir {folder}: there is no such folder.")
    os.environ["DLT_PROJECT_DIR"] = str(path.parent)
    os.environ["DLT_CONFIG_FOLDER"] = path.name


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.debug = getattr(args, "debug", False)
    args.log_format = getattr(args, "log_format", "text")
    logs.setup(args.log_format, args.debug)
    try:
        # the work runs in a job thread so that Ctrl-C and SIGTERM are acted on at once
        try:
            return interrupt.run_in_foreground(lambda: _dispatch(args))
        except Exception as exc:  # an interruption that dlt wrapped in its own error
            stop_inside = find_cause(exc, interrupt.Interrupted)
            if stop_inside is None:
                raise
            raise stop_inside from None
    except interrupt.Interrupted as stop:
        _fail(
            f"interrupted ({signal.Signals(stop.signum).name}): the warehouse keeps its last "
            "complete state; the next run picks up.",
            stop.exit_code,
        )
        if not stop.finished:  # the job thread is stuck in a call: end without waiting for it
            logs.flush()
            os._exit(stop.exit_code)
        return stop.exit_code
    except KeyboardInterrupt:
        return _fail("interrupted; the warehouse keeps its last complete state.", 130)
    except Exception as exc:
        expected = is_expected(exc)
        if args.debug:
            traceback.print_exception(exc)
        if expected is not None:
            return _fail(str(expected), int(expected.exit_code))
        return _fail(
            f"unexpected error ({type(exc).__name__}); nothing was applied past the last "
            "completed step. Re-run with --debug and report the output.",
            int(ExitCode.INTERNAL),
        )


def _fail(sentence: str, code: int) -> int:
    """The one sentence a person acts on, on stderr, and the exit code."""
    logs.event("run_failed", sentence, logging.ERROR, exit_code=code)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "config_dir", None):
        _use_config_dir(args.config_dir)
    # imported here, after --config-dir: dlt reads the settings folder's name when imported
    from practice_sync import config_check
    from practice_sync.pipeline import Job, database_from_config, run, transform

    if args.command == "demo":
        return _demo(args)
    if args.command == "docs":
        from practice_sync import docs

        return docs.main(args)
    config_check.check()
    if args.command == "run":
        job = Job(
            database=database_from_config(args.database),
            sources=list(dict.fromkeys(args.source)) if args.source else None,  # once each
            allow_deletions=args.allow_deletions,
            show_progress=not args.quiet,
            wait_for_lock=args.wait_for_lock,
            full_refresh=args.full_refresh,
        )
        report, code = run(job)
        return _finish(report, code)
    if args.command == "transform":
        report, code = transform(
            database_from_config(args.database), args.full_rebuild, wait=args.wait_for_lock
        )
        return _finish(report, code)
    if args.command == "status":
        from practice_sync import status

        return status.main(args, _sql_target(args.database))
    if args.command == "report":
        from practice_sync import html_report

        return html_report.main(args, _sql_target(args.database))
    return _sql(_sql_target(args.database), args.query)


def _sql_target(explicit: str | None) -> Path:
    """The file `sql` reads: the one named, or the serving file of the configured warehouse."""
    from practice_sync.serve import serve_path
    from practice_sync.warehouse import database_from_config

    if explicit:
        return Path(explicit).expanduser().resolve()
    return serve_path(database_from_config())


def _finish(report: RunReport, code: ExitCode) -> int:
    """The summary on stdout; each failure once more on stderr, where schedulers look."""
    for source in report.sources:
        logs.event("source_finished", source.render(), logging.INFO, **source.fields())
    logs.event(
        "run_finished", report.render_run(), logging.INFO, exit_code=int(code), **report.fields()
    )
    for problem in report.problems():
        logs.event("problem", problem, logging.ERROR)
    return int(code)


def _sql(database: Path, query: str) -> int:
    """Analysts without a DuckDB shell can still look; read-only, so it never blocks a run."""
    import duckdb

    if not database.exists():
        raise ConfigError(
            f"There is no warehouse file at {database}: run `practice-sync run` first."
        )
    try:
        with duckdb.connect(str(database), read_only=True) as con:
            result = con.sql(query)
            if result is None:  # an empty query, a comment, or a statement without rows
                print("(the statement returned no rows)")
            else:
                result.show(max_width=160)
    except duckdb.Error as exc:
        print(f"practice-sync: the query failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return int(ExitCode.USAGE)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Start the simulator on a loopback port and run the real job against it, from scratch."""
    from practice_sync.pipeline import Job, run
    from practice_sync.serve import serve_path
    from practice_sync.simulator import Simulator

    target = Path(args.dir).resolve()
    target.mkdir(parents=True, exist_ok=True)
    database = target / "practice_sync_demo.duckdb"
    # the demo's outputs are its own: a project folder's settings must not send simulator data
    # to the real serving file or publish destinations (the environment outranks .dlt files)
    os.environ["PRACTICE_SYNC__PUBLISH"] = "[]"
    os.environ["PRACTICE_SYNC__SERVE_PATH"] = str(target / "practice_sync_demo_analytics.duckdb")
    serving = serve_path(database)
    for old in (database, database.with_name(database.name + ".wal"), serving):
        old.unlink(missing_ok=True)
    shutil.rmtree(Job(database=database).pipelines_dir, ignore_errors=True)
    print(
        f"Starting the Bizstim + TimeTap simulator ({args.sessions:,} sessions, {args.clients:,} clients) ..."
    )
    with Simulator(sessions=args.sessions, clients=args.clients) as sim:
        job = Job(
            database=database,
            overrides={
                "bizstim": {"base_url": sim.bizstim_url, "api_key": sim.bizstim_api_key},
                "timetap": {
                    "base_url": sim.timetap_url,
                    "api_key": sim.timetap_api_key,
                    "private_key": sim.timetap_private_key,
                },
            },
        )
        report, code = run(job)
    if code != ExitCode.OK:
        return _finish(report, code)
    print(report.render())
    _print_next_steps(database, serving, report)
    return 0


def _command() -> str:
    """How to run practice-sync again from here: `.venv/bin/practice-sync` in a clone, the bare
    name where it was installed elsewhere (pipx, a system package), which has no `.venv`."""
    exe = Path(sys.argv[0])
    if exe.name == "practice-sync" and exe.resolve().is_relative_to(Path.cwd()):
        return os.path.relpath(exe)
    return "practice-sync"


def _print_next_steps(database: Path, serving: Path, report: RunReport) -> None:
    print(f"\nWarehouse: {database}")
    print(f"Serving file for analysts and BI tools (read-only): {serving}")
    print("Tables: " + ", ".join(f"analytics.{name}" for name in sorted(report.analytics)))
    print("\nA query to try (or open the serving file with any DuckDB client):")
    shown = os.path.relpath(serving) if serving.is_relative_to(Path.cwd()) else serving
    print(f'  {_command()} sql --database {shown} "{DEMO_QUERY}"\n')
    _sql(serving, DEMO_QUERY)


if __name__ == "__main__":
    sys.exit(main())
