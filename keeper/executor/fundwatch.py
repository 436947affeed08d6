"""Insurance-fund watch: a bad debt the fund could not cover in full (``BadDebtSettled`` with
``paidByFund < debt``: the rest is socialized to the vault's providers) raises an operator alert
(``fund_shortfall``) as soon as the indexer has it, and is queryable for the page (:func:`shortfalls`).

The figures are the indexer's ``bad_debts`` rows (debt, paidByFund, socialized, block, tx); this module
adds no table. The watch resumes after the highest row id seen (``cursor``); at start it begins at the
current maximum unless a ``since_block`` is given (to alert on what happened while the keeper was down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from keeper.alerts.dispatcher import AlertKind, OperatorAlert, Severity
from keeper.store.models import BAD_DEBTS

__all__ = ["Shortfall", "shortfalls", "FundWatch"]

log = logging.getLogger(__name__)
USDC = 10**6


@dataclass(frozen=True)
class Shortfall:
    id: int
    block_number: int
    block_timestamp: int | None
    tx_hash: str
    account: str
    debt: int
    paid_by_fund: int
    socialized: int

    def text(self) -> str:
        return (
            f"insurance fund shortfall: bad debt of {self.account} ${self.debt / USDC:,.2f}, fund paid "
            f"${self.paid_by_fund / USDC:,.2f}, ${self.socialized / USDC:,.2f} socialized to the vault "
            f"(block {self.block_number}, tx {self.tx_hash})"
        )


def shortfalls(
    engine: Engine,
    chain_id: int,
    *,
    after_id: int | None = None,
    since_block: int | None = None,
    since_time: int | None = None,
    up_to_id: int | None = None,
    limit: int = 100,
) -> list[Shortfall]:
    """Socialized losses (paidByFund < debt), oldest first, from the indexer's ``bad_debts``."""
    q = select(BAD_DEBTS).where(BAD_DEBTS.c.chain_id == chain_id)
    if after_id is not None:
        q = q.where(BAD_DEBTS.c.id > after_id)
    if up_to_id is not None:
        q = q.where(BAD_DEBTS.c.id <= up_to_id)
    if since_block is not None:
        q = q.where(BAD_DEBTS.c.block_number >= since_block)
    if since_time is not None:
        q = q.where(BAD_DEBTS.c.block_timestamp >= since_time)
    out: list[Shortfall] = []
    with engine.connect() as conn:
        # BigInt columns compare exactly in Python (stored as decimal text on some databases)
        for r in conn.execute(q.order_by(BAD_DEBTS.c.id)).mappings():
            if int(r["paid_by_fund"]) < int(r["debt"]):
                out.append(
                    Shortfall(
                        r["id"],
                        r["block_number"],
                        r["block_timestamp"],
                        r["tx_hash"],
                        r["account"],
                        int(r["debt"]),
                        int(r["paid_by_fund"]),
                        int(r["socialized"]),
                    )
                )
                if len(out) >= limit:
                    break
    return out


@dataclass
class FundWatch:
    engine: Engine
    chain_id: int
    dispatcher: Any = None  # keeper.alerts.dispatcher.AlertDispatcher
    since_block: int | None = None
    on_shortfall: Callable[[Shortfall], Any] | None = None
    cursor: int | None = None
    seen: list[Shortfall] = field(default_factory=list)

    def _start(self) -> None:
        if self.since_block is not None:
            self.cursor = 0
            return
        with self.engine.connect() as conn:
            self.cursor = (
                conn.execute(
                    select(func.max(BAD_DEBTS.c.id)).where(BAD_DEBTS.c.chain_id == self.chain_id)
                ).scalar()
                or 0
            )

    async def run_once(self) -> list[Shortfall]:
        if self.cursor is None:
            self._start()
        with self.engine.connect() as conn:
            top = conn.execute(
                select(func.max(BAD_DEBTS.c.id)).where(BAD_DEBTS.c.chain_id == self.chain_id)
            ).scalar()
        if top is None or top <= (self.cursor or 0):
            return []
        new = shortfalls(
            self.engine,
            self.chain_id,
            after_id=self.cursor,
            up_to_id=top,
            since_block=self.since_block,
            limit=10_000,
        )
        for s in new:
            self.seen.append(s)
            log.critical("%s", s.text())
            if self.on_shortfall is not None:
                self.on_shortfall(s)
            if self.dispatcher is not None:
                # subject: the tx and account, so that two shortfalls are two alerts (no cool-down merge)
                await self.dispatcher.alert(
                    OperatorAlert(
                        AlertKind.FUND_SHORTFALL, s.text(), f"{s.tx_hash}:{s.account}", Severity.CRITICAL
                    )
                )
        self.cursor = top  # rows without a shortfall are passed too
        return new
