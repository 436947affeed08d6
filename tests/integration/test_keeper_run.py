"""`keeper run` as an operator runs it: one process indexes, liquidates a crash, publishes and serves
the page; SIGTERM stops it cleanly; the key appears nowhere in its logs or database.

Alerts end to end through the same run, on real receivers (an aiohttp webhook and an aiosmtpd SMTP
server): a user registers a contact for a short position, the price is pushed through the 150% / 120% /
110% lines one at a time — one silent message, one push, one push + one email, once per crossing for
the whole run — and a zeroed oracle raises one untrusted-oracle operator alert (webhook + email).
Every metric the dashboard shows is checked with its real value after the run, against the chain or
the database where they say the same thing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from alert_receivers import Inbox, alert_env, receivers, wait_for
from eth_abi import decode
from eth_account import Account
from eth_utils import keccak
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from keeper.alerts.contacts import Contact, SqlContacts
from keeper.devchain.anvil import DEV_KEYS, free_port
from keeper.devchain.simulate import Rpc, simulate, trader_address
from keeper.indexer.testing import Driver
from keeper.store.engine import make_engine

KEY = DEV_KEYS[3]  # anvil dev account 3
FUNDING_KEY = DEV_KEYS[4]  # anvil dev account 4
ADL_KEY = DEV_KEYS[5]  # anvil dev account 5
TRADERS = 300
SEED = 5
USER_EMAIL = "trader@example.com"
USDC = 10**6
WAD = 10**18


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def liquidatable(rpc: Rpc, exchange: str) -> list[str]:
    sel = keccak(text="isLiquidatable(address)")[:4].hex()
    addrs = [trader_address(SEED, i) for i in range(TRADERS)]
    out = rpc.eth_calls([(exchange, "0x" + sel + "00" * 12 + a[2:].lower()) for a in addrs])
    return [a for a, r in zip(addrs, out, strict=True) if r is not None and decode(["bool"], r)[0]]


def metric_values(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }


def open_short(d: Driver, user: str, market: int, notional_usd: int, price_usd: float) -> None:
    """A certified (professional, 20x) trader: $1,000 deposited, short ``notional_usd`` at 20x."""
    ex = d.c["Exchange"]
    d.send_all(
        [
            d.tx(d.usdc, "faucet", [user, 1_000 * USDC], user),
            d.tx(d.usdc, "approve", [ex.address, 2**256 - 1], user),
            d.tx(ex, "deposit", [1_000 * USDC], user),
            d.tx(ex, "setEducation", [user, True], d.risk_admin),
            d.tx(ex, "setCertified", [user, True], d.risk_admin),
        ]
    )
    size = int(notional_usd / price_usd * 1e9) * 10**9
    d.send(d.trade_tx(user, market, -size, 20))


def short_price_for_ratio(d: Driver, user: str, market: int, ratio: float, mmr: float = 0.02) -> int:
    """Feed answer (8 decimals) putting a one-position SHORT account's margin ratio at ``ratio``:
    equity c + s (P - e) = ratio x |s| P mmr with s < 0."""
    ex = d.c["Exchange"]
    size, entry, _ = ex.functions.positionOf(user, market).call()
    c = ex.functions.collateralOf(user).call() / USDC
    s, e = size / WAD, entry / WAD
    return int((s * e - c) / (s * (1 + ratio * mmr)) * 10**8)


def test_keeper_run_liquidates_a_crash_and_serves_the_page(deployed: Any, tmp_path: Path) -> None:
    with receivers() as inbox:
        _keeper_run(deployed, tmp_path, inbox)


def _keeper_run(deployed: Any, tmp_path: Path, inbox: Inbox) -> None:
    dep = deployed.deployment
    rpc = Rpc(deployed.anvil.url)
    simulate(deployed.w3, dep, "calm", traders=TRADERS, seed=SEED, blocks=3, log=lambda _: None)
    d = Driver(deployed.w3, dep)
    btc = next(m.id for m in dep.markets if m.symbol == "BTC")
    sol = next(m for m in dep.markets if m.symbol == "SOL")
    user = deployed.w3.eth.accounts[7]
    btc_price = d.c["OracleHub"].functions.tryMarkPrice(btc).call()[1] / WAD
    open_short(d, user, btc, 10_000, btc_price)
    start_balances = {
        k: int(rpc.call("eth_getBalance", Account.from_key(k).address, "latest"), 16)
        for k in (KEY, FUNDING_KEY)
    }
    port, metrics_port = free_port(), free_port()
    db = tmp_path / "keeper.db"
    env = {
        **os.environ,
        "KEEPER_CHAIN__RPC_URLS": f'["{deployed.anvil.url}"]',
        "KEEPER_CHAIN__WS_URL": deployed.anvil.url.replace("http", "ws"),
        "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
        "KEEPER_DATABASE__URL": f"sqlite:///{db}",
        "KEEPER_SERVER__PORT": str(port),
        "KEEPER_METRICS__PORT": str(metrics_port),
        "KEEPER_LOGGING__FORMAT": "json",
        "KEEPER_LOGGING__LEVEL": "DEBUG",
        "KEEPER_PRIVATE_KEY": KEY,
        "KEEPER_FUNDING_KEY": FUNDING_KEY,
        "KEEPER_ADL_KEY": ADL_KEY,
        "KEEPER_WATCH__CHECK_INTERVAL": "1",
        **alert_env(inbox),
    }
    log_path = tmp_path / "keeper.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keeper.cli", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while get(f"http://127.0.0.1:{port}/api/insurance-fund")[0] != 200:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the page never came up"
            time.sleep(0.3)

        def alive() -> None:
            assert proc.poll() is None, log_path.read_text()[-3000:]

        # A user registers where to be warned (the keeper reads user_contact at each crossing).
        engine = make_engine(f"sqlite:///{db}", busy_timeout_ms=30_000)
        hook = f"{inbox.hook_base}/user"
        contact = Contact(user, webhook_url=hook, webhook_format="telegram", chat_id="42", email=USER_EMAIL)
        try:
            for attempt in range(20):  # SQLite: a read upgraded to a write is refused while the keeper writes
                try:
                    SqlContacts(engine, dep.chain_id, allow_private=True).set(contact)
                    break
                except OperationalError:
                    assert attempt < 19
                    time.sleep(0.2)
        finally:
            engine.dispose()
        # One line at a time: WARNING (a silent message), DANGER (a push), LIQUIDATABLE (push + email).
        lines = [
            (1.35, "Zanbara: margin warning"),
            (1.15, "Zanbara: DANGER: close to liquidation"),
            (1.00, "Zanbara: LIQUIDATABLE: your account can be liquidated now"),
        ]
        for n, (ratio, title) in enumerate(lines, start=1):
            d.set_price(btc, short_price_for_ratio(d, user, btc, ratio))
            wait_for(f"the user's notice {title!r}", lambda n=n: len(inbox.texts("user")) >= n, 30, alive)
            assert inbox.texts("user")[n - 1] == title, inbox.texts("user")
        posts = inbox.posts["user"]
        assert [p.get("disable_notification", False) for p in posts] == [True, False, False]
        assert all(p["chat_id"] == "42" and user.lower() in p["text"] for p in posts)
        wait_for("the user's email", lambda: inbox.subjects(USER_EMAIL), 30, alive)
        assert inbox.subjects(USER_EMAIL) == [lines[2][1]]
        exchange = d.c["Exchange"]
        wait_for(
            "the user's liquidation", lambda: not exchange.functions.isLiquidatable(user).call(), 30, alive
        )

        simulate(deployed.w3, dep, "crash", traders=TRADERS, seed=SEED, log=lambda _: None)
        deadline = time.monotonic() + 90
        while left := liquidatable(rpc, dep.contracts["Exchange"]):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{len(left)} accounts still liquidatable"
            rpc.call("evm_mine")  # the keeper follows the head; give it blocks
            time.sleep(0.5)

        keeper = Account.from_key(KEY).address.lower()
        topic = (
            "0x"
            + keccak(
                text="Liquidated(address,uint256,(address,int256,uint256,uint256,uint256,uint256,bool,int256,uint256,int256))"
            ).hex()
        )
        logs = rpc.call(
            "eth_getLogs",
            {
                "fromBlock": "0x0",
                "toBlock": "latest",
                "address": dep.contracts["Exchange"],
                "topics": [topic],
            },
        )
        ours = [lg for lg in logs if lg["data"][26:66].lower() == keeper[2:]]
        assert ours, "the keeper liquidated nothing"

        # An hour of chain time later (feeds refreshed by the simulator), funding falls due: the keeper
        # settles every market once, on its own funding key.
        latest = rpc.call("eth_getBlockByNumber", "latest", False)
        rpc.call("evm_mine", int(latest["timestamp"], 16) + 3_600)
        simulate(deployed.w3, dep, "calm", traders=TRADERS, seed=SEED, blocks=2, log=lambda _: None)
        settled_topic = (
            "0x" + keccak(text="FundingSettled(uint256,uint256,int256,uint256,int256,uint256,uint256)").hex()
        )
        deadline = time.monotonic() + 60
        while True:
            settled = rpc.call(
                "eth_getLogs", {"fromBlock": "0x0", "toBlock": "latest", "topics": [settled_topic]}
            )
            # the latest period settled on every market (a crash crossing an hour boundary of chain
            # time, which starts at the wall clock's, settles the period before too)
            last = max((lg["topics"][2] for lg in settled), default=None)
            if len({lg["topics"][1] for lg in settled if lg["topics"][2] == last}) == len(dep.markets):
                break
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"funding settled on {len(settled)} markets only"
            rpc.call("evm_mine")
            time.sleep(0.5)
        funder = Account.from_key(FUNDING_KEY).address.lower()
        for lg in settled:
            tx = rpc.call("eth_getTransactionByHash", lg["transactionHash"])
            assert tx["from"].lower() == funder
        pairs = [(lg["topics"][1], lg["topics"][2]) for lg in settled]
        assert len(pairs) == len(set(pairs))  # exactly once per market and period

        # The operator: SOL's primary feed answers 0 -> one untrusted-oracle alert, webhook and email.
        # First every feed gets a fresh round: the funding hour left them stale, and the calm blocks
        # after it need not have refreshed SOL's, so SOL may still be under an earlier alert (which the
        # zero would then not repeat). Once trusted, that alert is resolved.
        d.set_answers()
        d.send(d.refresh_tx(sol.id))
        wait_for(
            "SOL's oracle trusted (any earlier alert resolved)",
            lambda: (
                inbox.texts("ops").count("[CRITICAL] untrusted oracle (SOL)")
                == inbox.texts("ops").count("RESOLVED untrusted oracle (SOL)")
            ),
            30,
            alive,
        )
        sol_alerts = len([t for t in inbox.texts("ops") if t == "[CRITICAL] untrusted oracle (SOL)"])
        d.send(d.tx(d.c["OracleHub"], "refresh", [sol.id], d.keeper, gas=300_000))  # (a block to read)
        from keeper.chain.connect import contract

        feed = contract(deployed.w3, "MockAggregator", sol.primary)
        d.send(d.tx(feed, "setAnswer", [0], d.feed_owner(sol.primary), gas=200_000))
        wait_for(
            "the untrusted-oracle alert",
            lambda: inbox.texts("ops").count("[CRITICAL] untrusted oracle (SOL)") > sol_alerts, 30, alive,
        )  # fmt: skip
        d.mine(5)
        time.sleep(2)  # more blocks, still zero: no second alert (cool-down)
        assert inbox.texts("ops").count("[CRITICAL] untrusted oracle (SOL)") == sol_alerts + 1
        assert "[CRITICAL] untrusted oracle (SOL)" in inbox.subjects("ops@example.org")
        # Once per crossing over the whole run: the crash after the user's liquidation sent nothing more.
        assert len(inbox.texts("user")) == 3 and inbox.subjects(USER_EMAIL) == [lines[2][1]]

        status, body = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"Insurance fund" in body
        time.sleep(1.5)  # one more watch pass on the idle chain (head age, balance)
        status, body = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and b"keeper_" in body
        check_metrics(metric_values(body), rpc, dep, db, start_balances)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log_path.read_text()[-3000:]
    logs_text = log_path.read_text().lower()
    for key in (KEY, FUNDING_KEY, ADL_KEY):
        bare = key[2:].lower()
        assert bare not in logs_text
        for f in tmp_path.glob("keeper.db*"):
            assert bare.encode() not in f.read_bytes().lower()


def check_metrics(
    v: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    rpc: Rpc,
    dep: Any,
    db: Path,
    start_balances: dict[str, int],
) -> None:
    """Each metric of the issue's list, with its real value after the run."""

    def m(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        assert key in v, f"{name} {labels} not exported"
        return v[key]

    import sqlite3

    with sqlite3.connect(db) as conn:
        checkpoint = conn.execute("select block_number from checkpoints").fetchone()[0]
        flags = dict(conn.execute("select rule, count(*) from anomaly_flags group by rule").fetchall())
    latest = rpc.call("eth_getBlockByNumber", "latest", False)
    head, head_ts = int(latest["number"], 16), int(latest["timestamp"], 16)
    # chain and index (the chain's time runs ahead of the clock here: the age is negative, and exact)
    assert abs(m("keeper_head_age_seconds") - (time.time() - head_ts)) < 5
    assert 0 <= m("keeper_index_lag_blocks") <= 3 and head - checkpoint <= 3
    assert m("keeper_events_indexed_total") > 1_000 and m("keeper_events_indexed_per_second") > 0
    # risk: the book's accounts, per tier
    tiers = {t: m("keeper_accounts_by_tier", tier=t) for t in ("healthy", "notice", "warning", "danger",
                                                               "liquidatable")}  # fmt: skip
    assert tiers["healthy"] >= 1 and sum(tiers.values()) >= TRADERS // 2, tiers
    assert m("keeper_oracle_untrusted", market="SOL") == 1
    assert m("keeper_oracle_untrusted", market="BTC") == 0 and m("keeper_oracle_untrusted", market="ETH") == 0
    assert flags.get("oracle_jump", 0) >= 1, flags  # the user's BTC move: far beyond its recent volatility
    for rule, count in flags.items():
        assert m("keeper_anomaly_flags_total", rule=rule) == count
    # execution
    assert m("keeper_liquidations_total", outcome="sent") >= 1
    assert (
        1 <= m("keeper_liquidations_total", outcome="mined") <= m("keeper_liquidations_total", outcome="sent")
    )
    assert m("keeper_liquidations_total", outcome="failed") == 0
    assert m("keeper_liquidations_total", outcome="lost_race") >= 0
    n = m("keeper_liquidation_latency_blocks_count")
    assert n >= 2 and m("keeper_liquidation_latency_seconds_count") == n
    assert 0 <= m("keeper_liquidation_latency_blocks_sum") / n <= 6  # the physical limit is 2-4 blocks
    assert m("keeper_liquidation_latency_blocks_bucket", le="+Inf") == n
    assert m("keeper_pending_transactions", lane="liquidation") == 0
    assert m("keeper_pending_transactions", lane="funding") == 0
    # gas: what each key paid on chain (they only ever pay gas), to the wei (floats: 1e-9 relative)
    for lane, key in (("liquidation", KEY), ("funding", FUNDING_KEY)):
        now = int(rpc.call("eth_getBalance", Account.from_key(key).address, "latest"), 16)
        paid = start_balances[key] - now
        assert paid > 0 and abs(m("keeper_gas_spent_wei_total", lane=lane) - paid) <= paid * 1e-9, lane
        if lane == "liquidation":
            assert m("keeper_balance_wei") == float(now)
    assert m("keeper_funding_lateness_seconds_count") >= len(dep.markets)
    # insurance fund, as published
    assert m("keeper_fund_balance_usd") > 0 and m("keeper_fund_coverage_ratio") > 0
