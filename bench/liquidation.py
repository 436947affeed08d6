"""Liquidation benchmarks: `.venv/bin/python bench/liquidation.py` (results: docs/benchmarks.md).

Options: --accounts N (10,000, part a), --traders N (2,000, part b), --seed S (7), --move PCT (3.5),
--web3-sample K (1,000), --rebuild (rebuild the cached chain of part a), --only a|b.

(a) Finding every liquidatable account after a price update, N accounts on anvil.
    Chain: deploy + ``simulate calm`` with N traders (3 blocks), cached with anvil ``--dump-state`` in
    ``var/bench/liq-a-n{N}-s{S}/`` and reloaded with ``--load-state`` (the build takes a minute or two).
    The book is loaded directly from chain state (positionOf × markets + collateralOf per trader, the
    markets' funding indices, params/MMRs; one batched read) at the pre-update marks. Then one price
    update: every market's primary and secondary feeds −PCT% and ``OracleHub.refresh``, mined in one
    block (a crash step is −3.5%). After it:
      ours   = the marks (one batched ``tryMarkPrice`` read) → ``Book.set_mark`` per market →
               ``Book.liquidatable()`` (median of 5: the move is undone in the book and replayed);
      theirs = the usual liquidator: one ``eth_call`` to ``Exchange.isLiquidatable`` per account,
               sequential over HTTP, keep-alive (requests.Session, bare JSON-RPC: faster than web3.py),
               plus web3.py ``contract.functions.isLiquidatable(a).call()`` on a K-account sample;
    the two answers are asserted equal. Target: ours ≥ 1,000× faster.
(b) Crash latency under ``keeper run`` (bench/_crash.py: fresh anvil ``--gas-limit 30000000``, interval
    mining 1 s, calm market of N traders, paced ``crash``): blocks from the oracle update that made an
    account liquidatable to the block including its liquidation (every ``Liquidated`` event of the
    keeper's key), p50/p99/max, beside the physical limit: the keeper's total liquidation gas ÷ the
    block gas limit, rounded up (the last of G gas of liquidations cannot land before ⌈G/L⌉ blocks
    after the first update; the first cannot land before the block after the update). Target: max ≤
    that limit + 1 block.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _crash import REPO, is_liq_data, run_crash, table_rows  # noqa: E402

from keeper.errors import exit_code  # noqa: E402

CACHE = REPO / "var" / "bench"
GAS_LIMIT = 30_000_000
USDC = 10**6


# ----------------------------------------------------------------------------------- (a) chain


def chain_dir(n: int, seed: int) -> Path:
    return CACHE / f"liq-a-n{n}-s{seed}"


def build_chain(folder: Path, n: int, seed: int) -> None:
    from web3 import Web3

    from keeper.devchain.anvil import DEV_KEYS, Anvil
    from keeper.devchain.deploy import deploy
    from keeper.devchain.simulate import simulate

    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "state.json.tmp"
    t0 = time.monotonic()
    with Anvil(extra_args=["--gas-limit", str(GAS_LIMIT), "--dump-state", str(state)]) as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 300}))
        accts = list(w3.eth.accounts)
        dep = deploy(w3, DEV_KEYS[0], accts[1], accts[2])
        r = simulate(w3, dep, "calm", traders=n, seed=seed, blocks=3)
        dep.save(folder / "deployment.json")
        print(f"  built: {r.txs_sent:,} txs, {r.accounts_with_positions:,} accounts with positions "
              f"({time.monotonic() - t0:.1f} s); saving anvil's state", flush=True)  # fmt: skip
        assert node.proc is not None
        node.proc.terminate()
        code = node.proc.wait(timeout=600)
    if code != 0 or not state.exists():
        raise SystemExit(f"anvil exited with {code} while dumping its state to {state}")
    state.rename(folder / "state.json")


def _dec(types: list[str], raw: bytes | None) -> tuple[Any, ...]:
    from eth_abi import decode

    assert raw is not None, "eth_call reverted"
    return tuple(decode(types, raw))


def load_book(rpc: Any, dep: Any, addrs: list[str]) -> Any:
    """The Book from chain state at latest: params, MMRs, funding indices, positions, collateral."""
    from keeper.devchain.simulate import calldata
    from keeper.risk import math as rm
    from keeper.risk.book import Book

    ex = dep.address("Exchange")
    markets = sorted(m.id for m in dep.markets)
    sel = {
        "params": "0x" + _sel("params()"),
        "market": lambda m: "0x" + _sel("market(uint256)") + f"{m:064x}",
        "state": lambda m: "0x" + _sel("marketState(uint256)") + f"{m:064x}",
    }
    head = (
        [(ex, sel["params"])]
        + [(ex, sel["market"](m)) for m in markets]
        + [(ex, sel["state"](m)) for m in markets]
    )
    res = rpc.eth_calls(head)
    p = _dec(["uint256"] * 12, res[0])
    mmr = {
        m: int(_dec(["(string,uint256,uint256,uint256,bool)"], r)[0][1])
        for m, r in zip(markets, res[1:4], strict=True)
    }
    fidx = {m: int(_dec(["uint256", "uint256", "uint256", "uint256", "int256", "uint256", "int256", "bool"], r)[4])
            for m, r in zip(markets, res[4:], strict=True)}  # fmt: skip
    book = Book(mmr, liquidation_bps=int(p[2]))
    book.funding_index.update(fidx)
    calls = []
    for a in addrs:
        calls += [(ex, calldata("positionOf", ("address", "uint256"), (a, m))) for m in markets]
        calls.append((ex, calldata("collateralOf", ("address",), (a,))))
    out = rpc.eth_calls(calls)
    per = len(markets) + 1
    for i, a in enumerate(addrs):
        chunk = out[i * per : (i + 1) * per]
        positions = {}
        for m, r in zip(markets, chunk[:-1], strict=True):
            size, entry, f = _dec(["int256", "uint256", "int256"], r)
            if size:
                positions[m] = rm.PositionState(int(size), int(entry), int(f))
        (coll,) = _dec(["int256"], chunk[-1])
        if positions or coll:
            book.set_account(a.lower(), int(coll), positions)
    return book


def _sel(sig: str) -> str:
    from eth_utils import keccak

    return keccak(text=sig)[:4].hex()


def read_marks(rpc: Any, dep: Any) -> dict[int, int]:
    oracle = dep.address("OracleHub")
    markets = sorted(m.id for m in dep.markets)
    res = rpc.eth_calls([(oracle, "0x" + _sel("tryMarkPrice(uint256)") + f"{m:064x}") for m in markets])
    out = {}
    for m, r in zip(markets, res, strict=True):
        ok, mark = _dec(["bool", "uint256"], r)
        assert ok, f"no mark for market {m}"
        out[m] = int(mark)
    return out


def price_update(rpc: Any, dep: Any, move_pct: float) -> int:
    """Every market's feeds × (1 − move), then refresh; one block. Returns its number."""
    from eth_abi import decode

    from keeper.devchain.simulate import FEED_SCALE, calldata

    oracle = dep.address("OracleHub")
    feeds = [(m.id, m.primary, m.secondary) for m in sorted(dep.markets, key=lambda m: m.id)]
    owner = "0x" + rpc.eth_calls([(feeds[0][1], "0x" + _sel("owner()"))])[0][-20:].hex()
    rpc.call("anvil_autoImpersonateAccount", True)
    rpc.call("anvil_setBalance", owner, hex(100 * 10**18))
    rpc.call("evm_setAutomine", False)
    k = 1 - move_pct / 100
    txs = []
    for _m, primary, secondary in feeds:
        for feed in (primary, secondary):
            raw = rpc.eth_calls([(feed, "0x" + _sel("latestRoundData()"))])[0]
            answer = decode(["uint80", "int256", "uint256", "uint256", "uint80"], raw)[1]
            txs.append((feed, calldata("setAnswer", ("int256",), (int(answer * k),))))
    for m, _p, _s in feeds:
        txs.append((oracle, calldata("refresh", ("uint256",), (m,))))
    nonce = int(rpc.call("eth_getTransactionCount", owner, "pending"), 16)
    for i, (to, data) in enumerate(txs):
        rpc.call("eth_sendTransaction", {"from": owner, "to": to, "data": data, "gas": hex(300_000),
                                         "nonce": hex(nonce + i)})  # fmt: skip
    rpc.call("evm_mine")  # the node's clock (the feeds' answers are fresh; funding moves only on settlement)
    rpc.call("evm_setAutomine", True)
    assert FEED_SCALE
    return int(rpc.call("eth_blockNumber"), 16)


def part_a(args: argparse.Namespace) -> dict[str, Any]:
    import requests
    from web3 import Web3

    from keeper.chain.deployments import Deployment
    from keeper.devchain.anvil import Anvil
    from keeper.devchain.simulate import Rpc, trader_address

    folder = chain_dir(args.accounts, args.seed)
    if args.rebuild or not (folder / "state.json").exists():
        print(
            f"  building the chain: {args.accounts:,} traders (cached in {folder.relative_to(REPO)})",
            flush=True,
        )
        build_chain(folder, args.accounts, args.seed)
    else:
        print(f"  reusing the chain cached in {folder.relative_to(REPO)}", flush=True)
    dep = Deployment.load(folder / "deployment.json")
    addrs = [trader_address(args.seed, i) for i in range(args.accounts)]
    out: dict[str, Any] = {"accounts": args.accounts, "move_pct": args.move}
    with Anvil(
        extra_args=["--gas-limit", str(GAS_LIMIT), "--load-state", str(folder / "state.json")]
    ) as node:
        rpc = Rpc(node.url, timeout=300)
        t0 = time.perf_counter()
        book = load_book(rpc, dep, addrs)
        marks0 = read_marks(rpc, dep)
        for m, x in marks0.items():
            book.marks[m] = x
        book.rebuild()
        out["load_s"] = time.perf_counter() - t0
        out["book_accounts"] = len(book.accounts)
        out["liquidatable_before"] = len(book.liquidatable())
        blk = price_update(rpc, dep, args.move)
        out["update_block"] = blk

        # ours: marks (one batched read) + set_mark per market + liquidatable()
        t0 = time.perf_counter()
        marks1 = read_marks(rpc, dep)
        t_rpc = time.perf_counter() - t0
        runs, crossed, evaluated = [], 0, 0
        multi = sum(1 for acct in book.accounts.values() if len(acct.positions) > 1)
        for _ in range(5):
            crossed = sum(len(book.crossed(m, marks0[m], marks1[m])) for m in marks1)
            evaluated = 0
            t0 = time.perf_counter()
            for m, x in marks1.items():
                book.set_mark(m, x)
                evaluated += book.last_evaluated
            ours = book.liquidatable()
            runs.append(time.perf_counter() - t0)
            for m, x in marks0.items():  # undo the move in the book, to replay it
                book.set_mark(m, x)
        for m, x in marks1.items():
            book.set_mark(m, x)
        ours_set = {a for a, _ in book.liquidatable()}
        out["ours_book_s"] = statistics.median(runs)
        out["ours_book_runs_ms"] = [r * 1e3 for r in runs]
        out["ours_rpc_s"] = t_rpc
        out["crossed"] = crossed
        out["evaluated"] = evaluated
        out["multi"] = multi
        out["liquidatable"] = len(ours_set)
        assert len(ours) == len(ours_set)

        # theirs: one eth_call per account, sequential, keep-alive HTTP
        ex = dep.address("Exchange")
        s = requests.Session()
        s.headers["Content-Type"] = "application/json"
        theirs = set()
        t0 = time.perf_counter()
        for i, a in enumerate(addrs):
            body = {"jsonrpc": "2.0", "id": i, "method": "eth_call",
                    "params": [{"to": ex, "data": is_liq_data(a)}, "latest"]}  # fmt: skip
            r = s.post(node.url, data=json.dumps(body)).json()
            if int(r["result"], 16):
                theirs.add(a.lower())
        out["theirs_s"] = time.perf_counter() - t0
        assert theirs == ours_set, (len(theirs), len(ours_set), len(theirs ^ ours_set))
        out["same_answer"] = True

        # web3.py on a sample, extrapolated
        w3 = Web3(Web3.HTTPProvider(node.url))
        c = w3.eth.contract(address=Web3.to_checksum_address(ex), abi=[{
            "type": "function", "name": "isLiquidatable", "stateMutability": "view",
            "inputs": [{"name": "account", "type": "address"}], "outputs": [{"name": "", "type": "bool"}]}])  # fmt: skip
        k = min(args.web3_sample, len(addrs))
        t0 = time.perf_counter()
        sample = {a.lower() for a in addrs[:k] if c.functions.isLiquidatable(a).call()}
        out["web3_sample_s"] = time.perf_counter() - t0
        out["web3_sample"] = k
        assert sample == {a.lower() for a in addrs[:k]} & ours_set
    return out


# ----------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/liquidation.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--traders", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--move", type=float, default=3.5)
    p.add_argument("--web3-sample", type=int, default=1_000)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--only", choices=("a", "b"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    lines = [f"Machine: {os.cpu_count()} cores."]
    results: dict[str, Any] = {}
    if args.only in (None, "a"):
        print(
            f"(a) liquidatable accounts after a −{args.move}% update, {args.accounts:,} accounts", flush=True
        )
        a = results["a"] = part_a(args)
        web3_full = a["web3_sample_s"] / a["web3_sample"] * a["accounts"]
        lines += [
            "",
            f"(a) {a['accounts']:,} traders ({a['book_accounts']:,} in the book), every market −{a['move_pct']}% in "
            f"one block: {a['liquidatable']:,} liquidatable ({a['liquidatable_before']} before), "
            f"{a['crossed']:,} single-market accounts crossed; {a['multi']:,} multi-market accounts; "
            f"{a['evaluated']:,} re-evaluations in all (crossed lines + left boxes). Same answer asserted.",
            "",
            "| method | time | ratio (theirs ÷ ours) | target |",
            "|---|---:|---:|---|",
            f"| ours: Book.set_mark × 3 + liquidatable() (median of 5) | {a['ours_book_s'] * 1e3:.2f} ms | — | |",
            f"| ours incl. the marks' RPC read (1 batch) | {(a['ours_book_s'] + a['ours_rpc_s']) * 1e3:.2f} ms | — | |",
            f"| theirs: isLiquidatable eth_call × {a['accounts']:,}, sequential, keep-alive | "
            f"{a['theirs_s']:.2f} s | {a['theirs_s'] / a['ours_book_s']:,.0f}× (book) / "
            f"{a['theirs_s'] / (a['ours_book_s'] + a['ours_rpc_s']):,.0f}× (incl. RPC) | ≥ 1,000× "
            f"({'ok' if a['theirs_s'] / a['ours_book_s'] >= 1000 else 'MISSED'}) |",
            f"| theirs via web3.py (× {a['web3_sample']:,} measured, extrapolated) | {web3_full:.2f} s | "
            f"{web3_full / a['ours_book_s']:,.0f}× | |",
            f"| (one-off) load the book from chain state + full recompute | {a['load_s']:.2f} s | | |",
        ]
    if args.only in (None, "b"):
        print(f"(b) crash latency under keeper run, {args.traders:,} traders, 30M gas 1 s blocks", flush=True)
        r = run_crash(args.traders, args.seed, gas_limit=GAS_LIMIT)
        s = results["b"] = r.summary()
        limit = max(1, math.ceil(s["limit_blocks"]))
        ok = "ok" if s["max_blocks"] <= limit + 1 else "MISSED"
        lines += [
            "",
            f"(b) {args.traders:,} traders, seed {args.seed}: crash blocks {r.crash_blocks[0]}..{r.crash_blocks[1]}, "
            f"{s['liquidations']} liquidations by the keeper in {s['txs']} transactions, {s['gas']:,} gas "
            f"= {s['limit_blocks']:.2f} blocks of 30M → physical limit {limit} block(s); "
            f"{s['from_oracle_block']}/{s['liquidations']} became liquidatable in a block with an oracle update; "
            f"{s['others']} liquidations by others; {s['left']} left liquidatable.",
            "",
            "| run | events | blocks p50 / p99 / max | mean blocks | seconds p50 / p99 / max | left liquidatable |",
            "|---|---:|---:|---:|---:|---:|",
            table_rows("keeper run, crash", s),
            "",
            f"max {s['max_blocks']:.0f} blocks vs physical limit {limit} + 1 = {limit + 1}: {ok}.",
        ]
    print()
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_code(main))
