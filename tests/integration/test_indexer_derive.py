"""The store and the derived state, without a node, on SQLite and on PostgreSQL.

* the migrations create exactly the models' schema; BigInt is lossless (uint256/int256 bounds);
* property (hypothesis): random event histories written in random chunks, then a rollback to a random
  fork and a different continuation, give the same database as a fresh index of the final history,
  table by table (raw events, histories, current state, window, checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from eth_abi import encode
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert, select

from keeper.indexer.abis import event_abis
from keeper.indexer.decode import EventDecoder, _canonical, checksum_address
from keeper.indexer.records import BlockHeader
from keeper.indexer.target import IndexTarget
from keeper.indexer.writer import CheckpointState, FetchedRange, IndexStore
from keeper.store.dump import diff_dumps, dump_tables
from keeper.store.engine import make_engine
from keeper.store.migrate import upgrade
from keeper.store.models import ACCOUNTS, TABLES, metadata
from keeper.store.testdb import DatabaseUnavailable, throwaway_database

CHAIN = 31337
ADDR = {
    "Exchange": checksum_address("0x" + "e1" * 20),
    "OracleHub": checksum_address("0x" + "e2" * 20),
    "LiquidityVault": checksum_address("0x" + "e3" * 20),
    "InsuranceFund": checksum_address("0x" + "e4" * 20),
}
TARGET = IndexTarget(chain_id=CHAIN, start_block=1, contracts={a.lower(): n for n, a in ADDR.items()})
ACCOUNTS_POOL = [checksum_address("0x" + f"{i:02x}" * 20) for i in (0xA1, 0xA2, 0xA3)]
DECODER = EventDecoder.for_contracts()
#: Events the derived tables are built from (plus a few that are stored raw only).
EVENTS = [
    (c, e)
    for c in ("Exchange", "OracleHub", "LiquidityVault", "InsuranceFund")
    for e in event_abis(c)
    if e["name"] not in ("RoleAdminChanged", "RoleRevoked", "Approval")
]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    try:
        with throwaway_database(str(request.param), tmp_path) as url:
            yield url
    except DatabaseUnavailable as exc:
        pytest.fail(str(exc))


def test_migrations_create_the_models_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        upgrade(engine)  # idempotent
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        # SQLModel.metadata is shared: other components' tables (not in this migration) are left out
        mine = {t.name for t in TABLES}
        assert [d for d in diffs if _diff_table(d) in mine] == []
    finally:
        engine.dispose()


def test_bigint_is_lossless(db_url: str) -> None:
    engine = make_engine(db_url)
    values = [0, 1, -1, 2**255 - 1, -(2**255), 2**256 - 1, 10**77, -(10**76) - 7]
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(
                insert(ACCOUNTS),
                [
                    {"chain_id": 1, "address": f"0x{i:040x}", "collateral": v, "trades": i, "tier": 0}
                    for i, v in enumerate(values)
                ],
            )
        with engine.connect() as conn:
            got = [r.collateral for r in conn.execute(select(ACCOUNTS).order_by(ACCOUNTS.c.trades))]
        assert got == values and all(type(v) is int for v in got)
    finally:
        engine.dispose()


def _diff_table(diff: Any) -> str | None:
    if isinstance(diff, list):  # column-level changes come grouped
        diff = diff[0]
    for item in diff[1:]:
        name = getattr(item, "name", None) if not isinstance(item, str) else None
        table = getattr(item, "table", None)
        if table is not None:
            return str(table.name)
        if name is not None and diff[0] in ("add_table", "remove_table"):
            return str(name)
    return str(diff[2]) if len(diff) > 2 and isinstance(diff[2], str) else None


# ------------------------------------------------------------------------------------ property


def _value(p: dict[str, Any]) -> st.SearchStrategy[Any]:
    t, name = p["type"], p.get("name", "")
    if t == "tuple":
        return st.tuples(*(_value(c) for c in p["components"]))
    if t == "address":
        return (
            st.sampled_from(ACCOUNTS_POOL)
            if name in ("account", "liquidator", "to", "from")
            else st.sampled_from([*ACCOUNTS_POOL, checksum_address("0x" + "f0" * 20)])
        )
    if t == "bool":
        return st.booleans()
    if t == "string":
        return st.sampled_from(["BTC", "ETH", "SOL"])
    if name == "marketId":
        return st.sampled_from([0, 1])
    if name in ("tier", "oldTier", "newTier", "reason", "kind"):
        return st.integers(0, 2 if name in ("reason", "kind") else 3)
    if name == "fundingPeriod":
        return st.sampled_from([3600, 60, 1])
    if t.startswith("uint"):
        bits = int(t[4:] or 256)
        return st.one_of(st.integers(0, 10**9), st.integers(0, 2**bits - 1))
    if t.startswith("int"):
        bits = int(t[3:] or 256)
        return st.one_of(st.integers(-(10**9), 10**9), st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    if t == "bytes32":
        return st.binary(min_size=32, max_size=32)
    raise AssertionError(t)


@st.composite
def _log(draw: st.DrawFn) -> tuple[str, list[str], str]:
    contract, abi = draw(st.sampled_from(EVENTS))
    spec = DECODER.spec(contract, abi["name"])
    topics, types, values = [spec.topic0], [], []
    for p in abi["inputs"]:
        v = draw(_value(p))
        if p.get("indexed"):
            topics.append("0x" + encode([_canonical(p)], [v]).hex())
        else:
            types.append(_canonical(p))
            values.append(v)
    return ADDR[contract], topics, "0x" + encode(types, values).hex()


_blocks = st.lists(st.lists(_log(), max_size=5), min_size=1, max_size=12)


def _hash(variant: str, n: int) -> str:
    return "0x" + keccak(text=f"{variant}:{n}").hex()


def _chain(
    variant_of: list[str], blocks: list[list[tuple[str, list[str], str]]]
) -> list[tuple[BlockHeader, list[dict[str, Any]]]]:
    """Headers and raw logs of blocks 1..n; block i belongs to the chain variant variant_of[i-1]."""
    out = []
    for i, logs in enumerate(blocks, start=1):
        h = _hash(variant_of[i - 1], i)
        parent = _hash(variant_of[i - 2], i - 1) if i > 1 else _hash("genesis", 0)
        header = BlockHeader(i, h, parent, 1_000 + 12 * i)
        raw = [
            {
                "address": addr.lower(),
                "topics": topics,
                "data": data,
                "blockNumber": hex(i),
                "blockHash": h,
                "blockTimestamp": hex(header.timestamp),
                "transactionHash": "0x" + keccak(text=f"{h}:{k}").hex(),
                "transactionIndex": hex(k),
                "logIndex": hex(k),
                "removed": False,
            }
            for k, (addr, topics, data) in enumerate(logs)
        ]
        out.append((header, raw))
    return out


def _range(chain: list[tuple[BlockHeader, list[dict[str, Any]]]], frm: int, to: int) -> FetchedRange:
    part = chain[frm - 1 : to]
    return FetchedRange(frm, to, [lg for _, logs in part for lg in logs], {h.number: h for h, _ in part})


def _reset(engine: Engine) -> IndexStore:
    with engine.begin() as conn:
        for t in reversed(TABLES):
            conn.execute(delete(t))
    store = IndexStore(engine, TARGET, DECODER, window=1_000)
    store.initialize(BlockHeader(0, _hash("genesis", 0), "0x" + "00" * 32, 1_000))
    return store


def _write_in_chunks(
    store: IndexStore, chain: list[Any], frm: int, to: int, cuts: list[int], cp: CheckpointState
) -> CheckpointState:
    points = sorted({c for c in cuts if frm <= c < to})
    start = frm
    for end in [*points, to]:
        cp = store.commit_range(_range(chain, start, end), cp)
        start = end + 1
    return cp


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    upgrade(e)
    yield e
    e.dispose()


def test_rollback_equals_fresh_index(engine: Engine) -> None:
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        old=_blocks,
        new=_blocks,
        fork_frac=st.floats(0, 1),
        cuts=st.lists(st.integers(1, 30), max_size=4),
        reorg_span=st.integers(1, 30),
    )
    def check(old: list[Any], new: list[Any], fork_frac: float, cuts: list[int], reorg_span: int) -> None:
        fork = int(fork_frac * len(old))  # blocks 1..fork are shared
        final_blocks = old[:fork] + new
        a = _chain(["a"] * len(old), old)
        b = _chain(["a"] * fork + ["b"] * len(new), final_blocks)

        store = _reset(engine)
        cp = store.checkpoint()
        assert cp is not None
        cp = _write_in_chunks(store, a, 1, len(old), cuts, cp)
        # the reorg: rollback above the fork and the first part of the new chain, in one transaction
        first_to = min(len(b), fork + reorg_span)
        fr = _range(b, fork + 1, first_to) if first_to > fork else None
        fork_hash = _hash("a", fork) if fork > 0 else _hash("genesis", 0)
        cp, _removed = store.commit_reorg((fork, fork_hash), fr, cp)
        if first_to < len(b):
            cp = _write_in_chunks(store, b, first_to + 1, len(b), cuts, cp)
        incremental = dump_tables(engine)

        store = _reset(engine)
        cp = store.checkpoint()
        assert cp is not None
        store.commit_range(_range(b, 1, len(b)), cp)
        fresh = dump_tables(engine)
        assert diff_dumps(incremental, fresh) == []

    check()
