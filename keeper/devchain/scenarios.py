"""Named market scenarios for the simulator: a price path per market, per block.

A scenario says, for each simulated block, how each market's primary price moves (a multiplier),
whether a primary feed stops updating, how much chain time passes, and how busy traders are.
The secondary feed always follows the primary with a little noise (within 0.5%), set by the simulator.
Everything random comes from the ``random.Random`` the simulator passes in, so a seed fixes the path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    default_blocks: int
    block_time: int = 12  # chain seconds per simulated block
    activity: float = 0.04  # share of traders who act in a block (open, reduce, deposit)

    def multipliers(self, block: int, n_markets: int, rng: random.Random) -> list[float]:
        """Primary price multiplier per market for ``block`` (0-based)."""
        return [1.0 + rng.uniform(-0.002, 0.002) for _ in range(n_markets)]

    def frozen(self, block: int, market: int) -> bool:
        """True when the market's primary feed is not updated in ``block``."""
        return False

    def extra_time(self, block: int) -> int:
        """Chain seconds added before ``block`` on top of ``block_time``."""
        return 0

    def open_weight(self, block: int) -> float:
        """Share of trader actions that open or increase (the rest reduce or deposit)."""
        return 0.45


class Calm(Scenario):
    """Small random walk (±0.2% a block); random opens, reductions and deposits."""


class Crash(Scenario):
    """−30% over 10 blocks on every market (as on 19 May 2021), then calm at the bottom."""

    crash_blocks = 10
    drop = 0.30

    def multipliers(self, block: int, n_markets: int, rng: random.Random) -> list[float]:
        if block < self.crash_blocks:
            step = (1.0 - self.drop) ** (1.0 / self.crash_blocks)
            return [step for _ in range(n_markets)]
        return super().multipliers(block, n_markets, rng)

    def open_weight(self, block: int) -> float:
        return 0.15 if block < self.crash_blocks else 0.35  # panic: mostly reductions


class Wick(Scenario):
    """One block −15% on every market, back to the previous price in the next block."""

    wick_block = 1
    depth = 0.15

    def multipliers(self, block: int, n_markets: int, rng: random.Random) -> list[float]:
        if block == self.wick_block:
            return [1.0 - self.depth] * n_markets
        if block == self.wick_block + 1:
            return [1.0 / (1.0 - self.depth)] * n_markets
        return super().multipliers(block, n_markets, rng)


class StaleOracle(Scenario):
    """One market's primary feed stops updating and chain time jumps past its heartbeat: Paused."""

    stale_market = 2  # SOL in the default deployment
    stop_block = 1
    jump = 3_600 + 60  # heartbeat + a minute

    def frozen(self, block: int, market: int) -> bool:
        return market == self.stale_market and block >= self.stop_block

    def extra_time(self, block: int) -> int:
        return self.jump if block == self.stop_block else 0


class CrashDay(Crash):
    """Crash day: 2,000 traders, −30% over 10 blocks with the base fee ×20, a 3-block reorg, the primary
    RPC rate-limited then down 30 s, a competing keeper, the page under load; the keeper (keeper run) is
    SIGKILLed once and restarted; verified and reported (keeper/devchain/crashday.py). Runs on its own
    anvil, not on --rpc-url; --traders and --seed apply, --blocks does not."""


SCENARIOS: dict[str, Scenario] = {
    "calm": Calm("calm", Calm.__doc__ or "", default_blocks=20),
    "crash": Crash("crash", Crash.__doc__ or "", default_blocks=12, activity=0.02),
    "wick": Wick("wick", Wick.__doc__ or "", default_blocks=4),
    "crash-day": CrashDay("crash-day", CrashDay.__doc__ or "", default_blocks=12, activity=0.02),
    "stale-oracle": StaleOracle("stale-oracle", StaleOracle.__doc__ or "", default_blocks=4),
}


def get(name: str) -> Scenario:
    from keeper.errors import KeeperError

    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeeperError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}") from None
