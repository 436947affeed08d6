"""Table dumps for comparisons: every table as sorted rows, surrogate ids left out.

Two databases hold the same index iff ``dump_tables(a) == dump_tables(b)`` (on any mix of SQLite and
PostgreSQL: BigInt values are ints, JSON documents are compared as canonical JSON text).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, select

from keeper.store.models import TABLES

SURROGATE = ("id",)


def _norm(v: Any) -> Any:
    if isinstance(v, dict | list):
        return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()
    return v


def _key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # None sorts first; mixed types are compared through (type name, repr) only when needed
    return tuple(
        (v is not None, str(type(v).__name__), v if isinstance(v, int | str | float) else repr(v))
        for v in row
    )


def dump_tables(engine: Engine, chain_id: int | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """{table: sorted rows (tuples in column order, surrogate ids excluded)} for every indexer table."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for t in TABLES:
            cols = [c for c in t.columns if c.name not in SURROGATE]
            q = select(*cols)
            if chain_id is not None:
                q = q.where(t.c.chain_id == chain_id)
            rows = [tuple(_norm(v) for v in r) for r in conn.execute(q)]
            rows.sort(key=_key)
            out[str(t.name)] = rows
    return out


def diff_dumps(
    a: dict[str, list[tuple[Any, ...]]], b: dict[str, list[tuple[Any, ...]]], limit: int = 5
) -> list[str]:
    """Human-readable differences between two dumps (empty when equal)."""
    lines: list[str] = []
    for name in sorted(set(a) | set(b)):
        ra, rb = a.get(name, []), b.get(name, [])
        if ra == rb:
            continue
        sa, sb = set(ra), set(rb)
        only_a = [r for r in ra if r not in sb]
        only_b = [r for r in rb if r not in sa]
        lines.append(
            f"{name}: {len(ra)} vs {len(rb)} rows, {len(only_a)} only in first, {len(only_b)} only in second"
        )
        lines += [f"  - {r}" for r in only_a[:limit]]
        lines += [f"  + {r}" for r in only_b[:limit]]
        if not only_a and not only_b:
            lines.append("  (same rows, different multiplicity)")
    return lines
