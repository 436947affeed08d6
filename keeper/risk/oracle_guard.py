"""Oracle guard: decides, each block, whether a market's prices may be acted on.

The contracts already reject a stale, non-positive, round-0 or future answer; the keeper adds its own
check that the two sources agree within a bound, because a source that lies consistently (Compound's
DAI in 2020, LUNA's floor in 2022) passes every per-answer check. An untrusted market gets no
liquidation from us until it is sane again. Pure: answers in, verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Distrust(StrEnum):
    NON_POSITIVE = "non-positive answer"
    ROUND_ZERO = "round 0"
    FROM_FUTURE = "timestamp in the future"
    STALE = "stale answer"
    DISAGREE = "sources disagree"
    PAUSED = "market paused"


@dataclass(frozen=True, slots=True)
class Answer:
    """One Chainlink-style answer, already scaled to 1e18."""

    round_id: int
    price: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class Verdict:
    trusted: bool
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        return "trusted" if self.trusted else "untrusted: " + "; ".join(self.reasons)


def check_answer(name: str, answer: Answer, now: int, heartbeat: int) -> list[str]:
    """The contract's own per-answer rules, restated so the keeper can say which one failed."""
    problems = []
    if answer.round_id == 0:
        problems.append(f"{name}: {Distrust.ROUND_ZERO.value}")
    if answer.price <= 0:
        problems.append(f"{name}: {Distrust.NON_POSITIVE.value}")
    if answer.updated_at > now:
        problems.append(f"{name}: {Distrust.FROM_FUTURE.value}")
    elif now - answer.updated_at > heartbeat:
        problems.append(f"{name}: {Distrust.STALE.value} ({now - answer.updated_at}s > {heartbeat}s)")
    return problems


def deviation_bps(a: int, b: int) -> int:
    """|a − b| / min(a, b) in basis points, rounded up (the stricter reading)."""
    lo = min(a, b)
    if lo <= 0:
        return 10**9
    return -(-abs(a - b) * 10_000 // lo)


def judge(
    primary: Answer,
    secondary: Answer,
    now: int,
    heartbeat: int,
    max_deviation_bps: int,
    paused: bool = False,
) -> Verdict:
    """Trusted only when both answers pass the contract's rules and agree within the bound."""
    reasons = check_answer("primary", primary, now, heartbeat) + check_answer(
        "secondary", secondary, now, heartbeat
    )
    if paused:
        reasons.append(Distrust.PAUSED.value)
    if not reasons:
        dev = deviation_bps(primary.price, secondary.price)
        if dev > max_deviation_bps:
            reasons.append(
                f"{Distrust.DISAGREE.value} by {dev / 100:.2f}% (bound {max_deviation_bps / 100:.2f}%)"
            )
    return Verdict(not reasons, tuple(reasons))
