"""Auto-deleveraging: when traders' unrealized profit in a market exceeds 45 % of the vault's assets, reduce
the positions the rules rank first until it is back under 40 %.

* **Trigger** (``Exchange.adlState(m)`` → traderPnl P, vaultAssets A, active): ADL may run while
  ``P·BPS > trigger·A``, or, once active, while ``P·BPS > target·A`` (the contract's hysteresis; the
  contract emits ``AdlStateChanged(active=false)`` when a step brings it under the target).
* **Ranking** (:func:`rank_positions`): the market's profitable positions from the index (``positions``),
  each account's value AV from the index (collateral, every position's PnL at mark minus pending funding,
  :func:`keeper.risk.math.account_risk`), scored with :func:`keeper.risk.math.adl_score`
  (``(mark/entry)·(notional/AV)``, mirrored for shorts), highest first, ties by address.
* **Sizing** (:func:`required_realization`, :func:`close_size_for`): closing Δ of a position at mark
  realizes ``r = Δ·(mark − entry)`` (shorts: ``entry − mark``) that the vault pays out, so both P and A
  fall by r. Back under the target needs ``(P − r)·BPS ≤ T·(A − r)``, i.e.
  ``r ≥ (P·BPS − T·A) / (BPS − T)``; each step closes just enough of the top-ranked position (plus a
  small margin for funding and rounding), the whole position when that is not enough, then the next.
* Every step is logged and lands in the indexer's ``adl_events`` (``AutoDeleveraged``). ADL signs on its
  own lane (key), never the liquidator's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from sqlalchemy import Engine, select

from keeper.chain.rpc import RpcError
from keeper.executor.funding import ExchangeViews, RiskParams, selector
from keeper.executor.txmanager import SimulationReverted, TxHandle, TxManager
from keeper.publisher.calls import decode_error
from keeper.risk import math as rm
from keeper.store.models import ACCOUNTS, MARKETS, POSITIONS

__all__ = [
    "AdlCandidate",
    "AdlStep",
    "AdlExecutor",
    "rank_positions",
    "required_realization",
    "close_size_for",
    "adl_allowed",
    "ADL_NOT_TRIGGERED",
    "ADL_NOT_PROFITABLE",
]

log = logging.getLogger(__name__)

ADL_NOT_TRIGGERED = selector("AdlNotTriggered(uint256,int256,uint256)")
ADL_NOT_PROFITABLE = selector("AdlPositionNotProfitable(address,uint256)")


@dataclass(frozen=True)
class AdlCandidate:
    account: str
    market_id: int
    size: int
    entry_price: int
    mark: int
    account_value: int
    pnl: int
    score: int


@dataclass
class AdlStep:
    market_id: int
    account: str
    size_abs: int
    score: int
    trader_pnl_before: int
    vault_assets_before: int
    handle: TxHandle | None = None
    outcome: str | None = None


def adl_allowed(pnl: int, assets: int, active: bool, p: RiskParams) -> bool:
    """The contract's ``_adlAllowed``."""
    if pnl <= 0:
        return False
    share = pnl * rm.BPS
    return share > p.adl_trigger_bps * assets or (active and share > p.adl_target_bps * assets)


def required_realization(pnl: int, assets: int, target_bps: int) -> int:
    """Smallest profit r to realize so that ``(P − r)·BPS ≤ T·(A − r)`` (0 when already there)."""
    excess = pnl * rm.BPS - target_bps * assets
    if excess <= 0:
        return 0
    return rm.ceil_div(excess, rm.BPS - target_bps)


def close_size_for(realize: int, size: int, entry: int, mark: int, margin_bps: int = 0) -> int:
    """|Δ| of the position to close at ``mark`` to realize ``realize`` (capped at |size|)."""
    per_unit = (mark - entry) if size > 0 else (entry - mark)
    if per_unit <= 0 or realize <= 0:
        return 0
    want = realize * (rm.BPS + margin_bps)
    delta = rm.ceil_div(want * rm.USD_SCALE, per_unit * rm.BPS) + 1
    return min(abs(size), delta)


def rank_positions(
    engine: Engine, chain_id: int, market_id: int, marks: dict[int, int]
) -> list[AdlCandidate]:
    """The market's profitable positions, highest ``adl_score`` first (index state, marks given)."""
    with engine.connect() as conn:
        here = [
            r
            for r in conn.execute(
                select(POSITIONS).where(POSITIONS.c.chain_id == chain_id, POSITIONS.c.market_id == market_id)
            ).mappings()
            if int(r["size"]) != 0
        ]
        if not here:
            return []
        accounts = sorted({r["account"] for r in here})
        pos_rows = (
            conn.execute(
                select(POSITIONS).where(POSITIONS.c.chain_id == chain_id, POSITIONS.c.account.in_(accounts))
            )
            .mappings()
            .all()
        )
        coll = {
            r["address"]: int(r["collateral"])
            for r in conn.execute(
                select(ACCOUNTS.c.address, ACCOUNTS.c.collateral).where(
                    ACCOUNTS.c.chain_id == chain_id, ACCOUNTS.c.address.in_(accounts)
                )
            ).mappings()
        }
        mk = {
            int(r["market_id"]): r
            for r in conn.execute(select(MARKETS).where(MARKETS.c.chain_id == chain_id)).mappings()
        }
    by_account: dict[str, dict[int, rm.PositionState]] = {}
    for r in pos_rows:
        if int(r["size"]) != 0:
            by_account.setdefault(r["account"], {})[int(r["market_id"])] = rm.PositionState(
                int(r["size"]), int(r["entry_price"]), int(r["entry_funding_index"])
            )
    all_marks = {m: marks.get(m) or int(row["mark_price"] or 0) for m, row in mk.items()}
    indices = {m: int(row["funding_index"]) for m, row in mk.items()}
    mmr = {m: int(row["mmr_bps"] or 0) for m, row in mk.items()}
    mark = all_marks[market_id]
    out = []
    for r in here:
        size, entry = int(r["size"]), int(r["entry_price"])
        pnl = rm.pnl(size, entry, mark)
        if pnl <= 0:
            continue
        av = rm.account_risk(
            coll.get(r["account"], 0), by_account[r["account"]], all_marks, indices, mmr
        ).value
        out.append(
            AdlCandidate(
                r["account"], market_id, size, entry, mark, av, pnl, rm.adl_score(size, entry, mark, av)
            )
        )
    out.sort(key=lambda c: (-c.score, c.account.lower()))
    return out


def _adl_calldata(m: int, account: str, size_abs: int) -> str:
    return (
        selector("autoDeleverage(uint256,address,uint256)")
        + abi_encode(["uint256", "address", "uint256"], [m, account, size_abs]).hex()
    )


@dataclass
class AdlExecutor:
    """One ADL step per market per pass (non-blocking): the next step is planned from fresh chain state
    once the previous one is resolved, until the contract clears ``adlActive``."""

    views: ExchangeViews
    txm: TxManager
    engine: Engine
    chain_id: int
    markets: Sequence[int]
    margin_bps: int = 100
    steps: list[AdlStep] = field(default_factory=list)
    _in_flight: dict[int, AdlStep] = field(default_factory=dict)

    async def _position(self, account: str, m: int) -> tuple[int, int]:
        out = await self.views._call(
            self.views.exchange, "positionOf(address,uint256)", ["address", "uint256"], [account, m], "latest"
        )
        size, entry, _ = abi_decode(["int256", "uint256", "int256"], bytes.fromhex(out[2:]))
        return int(size), int(entry)

    async def run_once(self, params: RiskParams | None = None) -> list[AdlStep]:
        params = params or await self.views.params()
        head, _ = await self.views.head()
        await self.txm.tick(head)
        sent = []
        for m in self.markets:
            step = self._in_flight.get(m)
            if step is not None:
                out = step.handle.outcome if step.handle else None
                if out is None:
                    continue
                step.outcome = out.state
                del self._in_flight[m]
            try:
                new = await self._step(m, params)
            except RpcError as exc:
                if not exc.reverted:
                    raise
                # e.g. OracleInvalid: the market's feed is stale, and the contract refuses to value it;
                # no ADL on a bad oracle, and the other markets go on
                err = decode_error(exc.revert_data)
                why = err[0] if err is not None else exc.message
                log.warning("ADL check of market %d skipped at block %d: the exchange's views revert (%s)",
                            m, head, why)  # fmt: skip
                continue
            if new is not None:
                sent.append(new)
        return sent

    async def _step(self, m: int, params: RiskParams) -> AdlStep | None:
        pnl, assets, active = await self.views.adl_state(m)
        if not adl_allowed(pnl, assets, active, params):
            return None
        need = required_realization(pnl, assets, params.adl_target_bps)
        mark = await self.views.mark_price(m)
        for cand in rank_positions(self.engine, self.chain_id, m, {m: mark}):
            size, entry = await self._position(cand.account, m)  # the chain's, the index may lag a step
            if size == 0 or rm.pnl(size, entry, mark) <= 0:
                continue
            delta = close_size_for(need, size, entry, mark, self.margin_bps)
            if delta == 0:
                continue
            step = AdlStep(m, cand.account, delta, cand.score, pnl, assets)
            try:
                step.handle = await self.txm.submit(
                    self.views.exchange,
                    _adl_calldata(m, cand.account, delta),
                    purpose=f"adl:{m}:{cand.account}",
                )
            except SimulationReverted as rev:
                if rev.selector in (ADL_NOT_TRIGGERED, ADL_NOT_PROFITABLE):
                    log.info("ADL step on market %d for %s not needed: %s", m, cand.account, rev.selector)
                    if rev.selector == ADL_NOT_TRIGGERED:
                        return None
                    continue
                log.error("autoDeleverage(%d, %s, %d) would revert: %s", m, cand.account, delta, rev.reason)
                return None
            log.warning(
                "ADL market %d: traderPnl %d vs vault %d (%.2f%%) → closing %d of %s (score %d, top ranked "
                "profitable), to realize %d",
                m,
                pnl,
                assets,
                100 * pnl / max(assets, 1),
                delta,
                cand.account,
                cand.score,
                need,
            )
            self.steps.append(step)
            self._in_flight[m] = step
            return step
        log.error("ADL market %d triggered but no profitable position could be reduced", m)
        return None

    def idle(self) -> bool:
        return not self._in_flight

    async def wait_idle(self, timeout: float = 30.0) -> None:
        for step in list(self._in_flight.values()):
            if step.handle is not None:
                await step.handle.wait(timeout)

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "market": s.market_id,
                "account": s.account,
                "size": s.size_abs,
                "score": s.score,
                "outcome": s.outcome,
            }
            for s in self.steps
        ]
