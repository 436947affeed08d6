"""Simulate a seeded, reproducible market on the dev chain (anvil): traders, tiers, price paths.

Scenarios: calm (random walk ±0.2%/block with random opens, reductions and deposits), crash (−30% over
10 blocks on every market), wick (one block at −15%, back the next), stale-oracle (one market's primary
feed stops and chain time passes its heartbeat: the market is Paused), crash-day (the whole keeper's
worst hour on a throwaway anvil of its own: 2,000 traders by default, the crash with base fee x20, a reorg,
a failing primary RPC, a competing keeper, the page under load, one SIGKILL; report in
var/artifacts/crash-day.json; exit code 1 when a check fails; with --against-running, on `make run`'s
chain and keeper instead: traders seeded, the crash, the gas spike and the reorg there, the report from
that keeper's database and page, without the parts that need control of the keeper process: RPC
faults, SIGKILL, competing keeper). Traders are derived from the
seed; their setup (faucet, deposit, education, certification, warm-up trades to reach junior/senior,
opening positions up to each tier's leverage) runs once per chain and seed. Orders the contracts reject
are mined as reverted and counted. --forever keeps trading calmly (+60 s of chain time a block, so
hourly funding falls due) until Ctrl-C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SCENARIO_NAMES = ("calm", "crash", "wick", "stale-oracle", "crash-day")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument(
        "--scenario", choices=SCENARIO_NAMES, default="calm", help="price path (default: calm)"
    )
    parser.add_argument(
        "--traders", type=_positive, metavar="N", help="number of traders (default: 200; crash-day 2000)"
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed of traders and paths (default: 1; crash-day 11)"
    )
    parser.add_argument(
        "--blocks", type=_non_negative, metavar="N",
        help="simulated blocks (default per scenario: calm 20, crash 12, wick 4, stale-oracle 4)",
    )  # fmt: skip
    parser.add_argument(
        "--forever", action="store_true", help="trade calmly until Ctrl-C (ignores --scenario)"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS",
        help="with --forever: wall-clock pause between blocks (default: 1.0)",
    )  # fmt: skip
    parser.add_argument(
        "--pause-file", type=Path, metavar="PATH",
        help="with --forever: idle while PATH exists (crash-day --against-running creates it)",
    )  # fmt: skip
    parser.add_argument(
        "--against-running", action="store_true",
        help="crash-day on the running `make run` node (its anvil, keeper, page and database)",
    )  # fmt: skip
    parser.add_argument(
        "--block-interval", type=_positive_seconds, metavar="SECONDS",
        help="crash-day: wall seconds between blocks (default 1; --against-running 2: make run's "
        "keeper polls every 0.5 s and shares one SQLite file between index and journal)",
    )  # fmt: skip
    parser.add_argument(
        "--deployments", type=Path, metavar="PATH",
        help="deployments file (default: chain.deployments_file, config/deployments/local.json)",
    )  # fmt: skip
    parser.add_argument("--rpc-url", metavar="URL", help="JSON-RPC endpoint (default: first chain.rpc_urls)")
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: config/dev.toml)"
    )


def run(args: argparse.Namespace) -> int:
    from eth_account import Account

    from keeper.chain.connect import connect
    from keeper.chain.deployments import Deployment, default_path
    from keeper.config import load_settings
    from keeper.devchain.anvil import REPO_ROOT
    from keeper.devchain.simulate import format_summary, simulate
    from keeper.errors import KeeperError

    if args.against_running and (args.scenario != "crash-day" or args.forever):
        raise KeeperError("--against-running goes with --scenario crash-day (and not --forever)")
    if args.scenario == "crash-day" and not args.forever:
        args.seed = 11 if args.seed is None else args.seed
        from keeper.devchain.crashday import (
            CrashDayConfig,
            RunningNode,
            format_report,
            run_crash_day,
            run_crash_day_against,
        )

        if args.against_running:
            node = RunningNode.from_settings(load_settings(args.config), args.rpc_url, args.deployments)
            cfg = CrashDayConfig(traders=args.traders or 2_000, seed=args.seed,
                                 workdir=REPO_ROOT / "var" / "crash-day-running",
                                 report_path=REPO_ROOT / "var" / "artifacts" / "crash-day-running.json",
                                 block_interval=args.block_interval or 2.0)  # fmt: skip
            report = run_crash_day_against(node, cfg)
        else:
            cfg = CrashDayConfig(traders=args.traders or 2_000, seed=args.seed,
                                 block_interval=args.block_interval or 1.0)  # fmt: skip
            report = run_crash_day(cfg)
        print(format_report(report))
        return 0 if report["ok"] else 1
    if args.traders is None:
        args.traders = 200
    if args.seed is None:
        args.seed = 1
    settings = load_settings(args.config)
    path = args.deployments or default_path(settings.chain.deployments_file)
    deployment = Deployment.load(path)
    url = args.rpc_url or settings.chain.rpc_urls[0]
    w3 = connect(url, deployment.chain_id, timeout=settings.chain.request_timeout)
    risk_admin = None
    if settings.dev.risk_admin_key:
        try:
            risk_admin = str(Account.from_key(settings.dev.risk_admin_key).address)
        except Exception:  # noqa: BLE001 - an unusable key: fall back to the chain's RoleGranted events
            risk_admin = None
    result = simulate(
        w3,
        deployment,
        scenario=args.scenario,
        traders=args.traders,
        seed=args.seed,
        blocks=args.blocks,
        forever=args.forever,
        risk_admin=risk_admin,
        interval=args.interval,
        log=lambda line: print(line, flush=True),
        pause_file=args.pause_file,
    )
    print(format_summary(result))
    return 0
