"""`python -m practice_sync.simulator`: serve both simulated APIs in the foreground, e.g. for curl.

Stops on SIGINT or SIGTERM (exit 0: being told to stop is how a server's run ends), even when
started with SIGINT ignored, as every background job of a non-interactive shell is.
"""

from __future__ import annotations

import argparse
import signal

from practice_sync import interrupt

from .server import Simulator


def _add_accounts(sim: Simulator, args: argparse.Namespace) -> None:
    """`--accounts a,b`: more accounts of both vendors, each in its own zone, ids overlapping."""
    zones = ("America/New_York", "Europe/Berlin", "Australia/Sydney", "America/Chicago")
    names = [name.strip() for name in args.accounts.split(",") if name.strip()]
    for n, name in enumerate(names):
        sim.add_account(
            name,
            seed=args.seed + 1 + n,
            sessions=args.sessions,
            clients=args.clients,
            packages=args.packages,
            timezone=zones[n % len(zones)],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m practice_sync.simulator",
        description="Serve simulated Bizstim and TimeTap APIs until interrupted (Ctrl-C).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--packages", type=int, default=25)
    parser.add_argument("--timezone", default="America/Los_Angeles")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per response")
    parser.add_argument("--no-edge-cases", action="store_true", help="serve only clean rows")
    parser.add_argument(
        "--accounts",
        default="",
        help="more accounts of both vendors, e.g. downtown,uptown (own keys, zones, ids overlap)",
    )
    args = parser.parse_args(argv)

    # handlers first: a signal during start-up is acted on, not lost or ignored
    with interrupt.stop_handlers():
        sim = Simulator(
            seed=args.seed,
            sessions=args.sessions,
            clients=args.clients,
            packages=args.packages,
            timezone=args.timezone,
            latency=args.latency,
            edge_cases=not args.no_edge_cases,
            host=args.host,
            port=args.port,
        )
        _add_accounts(sim, args)
        sim.start()
        try:
            print(f"Simulator at {sim.url}", flush=True)
            print(f"  Bizstim  {sim.bizstim_url}  x-api-key: {sim.bizstim_api_key}", flush=True)
            print(
                f"  TimeTap  {sim.timetap_url}  apiKey: {sim.timetap_api_key}"
                f"  privateKey: {sim.timetap_private_key}",
                flush=True,
            )
            for account in sim.accounts.values():
                print(
                    f"  account {account.name}: Bizstim x-api-key {account.bizstim_api_key}; "
                    f"TimeTap apiKey {account.timetap_api_key} "
                    f"privateKey {account.timetap_private_key}",
                    flush=True,
                )
            print("Ctrl-C stops it.", flush=True)
            received = interrupt.wait_for_stop()
        finally:
            sim.stop()
    print(f"Stopped ({signal.Signals(received).name}).", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
