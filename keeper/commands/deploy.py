"""Deploy the Zanbara contracts to a dev chain and write the deployments file.

Deploys MockUSDC, a primary and a secondary price feed per market (BTC $60,000, ETH $2,000,
SOL $150), OracleHub, LiquidityVault, InsuranceFund and Exchange; grants the exchange its roles,
lists the three markets, seeds the vault ($20M) and the insurance fund ($500k). Keys come from the
config's [dev] section (anvil's public dev keys in config/dev.toml) or KEEPER_DEV__*_KEY.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("--rpc-url", metavar="URL", help="JSON-RPC endpoint (default: first chain.rpc_urls)")
    parser.add_argument(
        "--chain-id", type=int, metavar="N",
        help="refuse to deploy unless the node serves this chain id (default: chain.chain_id)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, metavar="PATH",
        help="deployments file to write (default: chain.deployments_file, config/deployments/local.json)",
    )  # fmt: skip
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: config/dev.toml)"
    )


def run(args: argparse.Namespace) -> int:
    from eth_account import Account

    from keeper.chain.connect import connect
    from keeper.chain.deployments import default_path
    from keeper.config import load_settings
    from keeper.devchain.deploy import deploy
    from keeper.errors import KeeperError

    settings = load_settings(args.config)
    url = args.rpc_url or settings.chain.rpc_urls[0]
    expected = args.chain_id if args.chain_id is not None else settings.chain.chain_id
    dev = settings.dev
    if not dev.deployer_key:
        raise KeeperError("missing key: set dev.deployer_key in the config or KEEPER_DEV__DEPLOYER_KEY")

    def address_of(key: str | None, what: str) -> str | None:
        if not key:
            return None
        try:
            return str(Account.from_key(key).address)
        except Exception:  # noqa: BLE001 - never echo a key
            raise KeeperError(f"dev.{what} is not a valid private key (64 hex digits)") from None

    risk_admin = address_of(dev.risk_admin_key, "risk_admin_key")
    guardian = address_of(dev.guardian_key, "guardian_key")
    w3 = connect(url, expected, timeout=settings.chain.request_timeout)
    deployment = deploy(w3, dev.deployer_key, risk_admin, guardian, log=print)
    out = args.out or default_path(settings.chain.deployments_file)
    deployment.save(out)
    print(f"wrote {out}")
    for name, address in deployment.contracts.items():
        print(f"  {name:<15} {address}")
    for m in deployment.markets:
        print(f"  market {m.id} {m.symbol:<4} feeds {m.primary} / {m.secondary}")
    return 0
