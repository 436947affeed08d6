"""Exact, human formatting of the chain's integers (no floats: what is shown is what was read)."""

from __future__ import annotations

from datetime import UTC, datetime

USDC = 10**6
WAD = 10**18
BPS = 10_000

TIER_NAMES = ("novice", "junior", "senior", "professional")
ORACLE_STATUS = ("active", "reduce-only", "paused")
ORACLE_REASONS = ("ok", "no feed", "non-positive", "round 0", "from the future", "stale")
WARNING_NAMES = ("healthy", "notice", "warning", "danger", "liquidatable")


def _group(n: int) -> str:
    return f"{n:,}"


def decimal_str(value: int, decimals: int, places: int | None = None) -> str:
    """``value / 10**decimals`` as an exact decimal string, truncated to ``places`` if given."""
    neg = value < 0
    v = abs(value)
    whole, frac = divmod(v, 10**decimals)
    digits = str(frac).rjust(decimals, "0") if decimals else ""
    digits = digits[:places] if places is not None else digits.rstrip("0")
    s = str(whole) + (f".{digits}" if digits else "")
    return ("-" if neg and v else "") + s


def usd(units: int | None, places: int = 2) -> str:
    """Collateral units (1e6) as dollars, grouped, truncated to ``places`` (e.g. $1,234.56)."""
    if units is None:
        return "n/a"
    neg = units < 0
    v = abs(units)
    whole, frac = divmod(v, USDC)
    s = "$" + _group(whole)
    if places:
        s += "." + str(frac).rjust(6, "0")[:places]
    return ("-" if neg else "") + s


def usd_exact(units: int) -> str:
    """Collateral units as an exact decimal string of dollars (API)."""
    return decimal_str(units, 6)


def price(wad: int | None) -> str:
    """A 1e18 price as dollars: 2 decimals above $100, more below."""
    if wad is None or wad == 0:
        return "n/a"
    whole = wad // WAD
    places = 2 if whole >= 100 else 4 if whole >= 1 else 8
    frac = str(wad % WAD).rjust(18, "0")[:places]
    return f"${_group(whole)}.{frac}"


def size(wad: int) -> str:
    return decimal_str(wad, 18, 6)


def bps_pct(bps: int | None, places: int = 2) -> str:
    """Basis points as a percentage (12345 -> 123.45%)."""
    if bps is None:
        return "n/a"
    return decimal_str(bps * 10**places // 100, places, places) + "%"


def ratio_pct(num: int, den: int, places: int = 2) -> str:
    if den <= 0:
        return "n/a"
    return decimal_str(num * 100 * 10**places // den, places, places) + "%"


def rate_pct(rate_wad: int, places: int = 5) -> str:
    """A 1e18 rate per period as a signed percentage (1e14 -> +0.01000%)."""
    s = decimal_str(
        rate_wad * 100 * 10**places // WAD if rate_wad >= 0 else -((-rate_wad) * 100 * 10**places // WAD),
        places,
        places,
    )
    return ("+" if rate_wad > 0 else "") + s + "%"


def utc(ts: int | float | None) -> str:
    if ts is None:
        return "n/a"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ts: int | float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def short_hash(h: str | None) -> str:
    if not h:
        return "n/a"
    return h[:10] + "…" + h[-8:]


def tier_name(t: int) -> str:
    return TIER_NAMES[t] if 0 <= t < len(TIER_NAMES) else f"tier {t}"
