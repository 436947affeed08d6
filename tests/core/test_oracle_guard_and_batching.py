"""Oracle guard verdicts and liquidation batch planning."""

from keeper.executor.batching import Candidate, GasModel, batch_gas, plan_batches
from keeper.risk.oracle_guard import Answer, deviation_bps, judge

E18 = 10**18
NOW = 1_700_000_000


def ok(price: int = 2000 * E18, age: int = 10) -> Answer:
    return Answer(round_id=5, price=price, updated_at=NOW - age)


def test_sane_oracle_is_trusted() -> None:
    assert judge(ok(), ok(2001 * E18), NOW, 3600, 200).trusted


def test_each_bad_answer_is_named() -> None:
    cases = {
        "stale": Answer(5, 2000 * E18, NOW - 3601),
        "non-positive": Answer(5, 0, NOW),
        "round 0": Answer(0, 2000 * E18, NOW),
        "future": Answer(5, 2000 * E18, NOW + 1),
    }
    for word, bad in cases.items():
        verdict = judge(bad, ok(), NOW, 3600, 200)
        assert not verdict.trusted and word in verdict.describe()


def test_sources_thirty_percent_apart_are_untrusted() -> None:
    verdict = judge(ok(2000 * E18), ok(1400 * E18), NOW, 3600, 200)
    assert not verdict.trusted and "disagree" in verdict.describe()
    assert deviation_bps(100, 102) == 200 and deviation_bps(102, 100) == 200


def test_batches_ordered_by_shortfall_and_sized_by_gas() -> None:
    cands = [Candidate(f"a{i}", 0, shortfall=i, reward=10) for i in range(10)]
    gas = GasModel(base=50_000, per_entry=100_000)
    batches = plan_batches(cands, block_gas_limit=1_000_000, gas=gas, fill=0.9, max_batches=5)
    assert [c.shortfall for c in batches[0]] == [9, 8, 7, 6, 5, 4, 3, 2]
    assert all(batch_gas(len(b), gas) <= 900_000 for b in batches)
    assert sum(len(b) for b in batches) == 10


def test_min_reward_policy() -> None:
    cands = [Candidate("poor", 0, 100, reward=1), Candidate("rich", 0, 1, reward=1_000)]
    assert [c.account for c in plan_batches(cands, 30_000_000)[0]] == ["poor", "rich"]
    assert [c.account for c in plan_batches(cands, 30_000_000, min_reward=10)[0]] == ["rich"]


def test_batch_gas_floor_covers_a_cold_entry_and_two_full_batches_fit_one_block() -> None:
    """The floor a batch is sent with: a lone entry gets the cold worst case; the keeper's two full
    batches of a 30M block (fill 0.5) still fit one block together with room for the oracle updates."""
    from keeper.executor.batching import batch_gas_floor

    gas = GasModel()
    assert batch_gas_floor(0) == 0
    assert batch_gas_floor(1) == batch_gas(1) >= 264_022  # measured: one cold full liquidation
    cands = [Candidate(f"a{i}", 0, shortfall=i, reward=1) for i in range(500)]
    batches = plan_batches(cands, 30_000_000, gas=gas, fill=0.5, max_batches=2)
    assert len(batches) == 2 and all(len(b) == 57 for b in batches)
    assert sum(batch_gas_floor(len(b)) for b in batches) <= 0.6 * 30_000_000
    assert all(batch_gas_floor(len(b)) >= len(b) * 79_000 * 1.5 for b in batches)  # 1.5x the mean measured
