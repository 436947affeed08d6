"""Input validation of the public API: every bad input is a 400 with a one-line JSON reason."""

from __future__ import annotations

import re

from eth_utils import is_checksum_address, to_checksum_address

_HEX_ADDR = re.compile(r"^0x[0-9a-fA-F]{40}$")
_INT = re.compile(r"^[0-9]{1,18}$")
_DECIMAL = re.compile(r"^-?[0-9]{1,12}(\.[0-9]{1,18})?$")
MAX_SIZE_WAD = 10**12 * 10**18  # 12 integer digits: always below


class BadInput(ValueError):
    """A request parameter failed validation: ``str(exc)`` is safe to show."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def address(value: str | None, param: str = "address") -> str:
    """A 0x address: all-lowercase/uppercase hex, or mixed case that is a valid EIP-55 checksum."""
    if value is None or value == "":
        raise BadInput(param, "required")
    if not _HEX_ADDR.match(value):
        raise BadInput(param, "must be 0x followed by 40 hex digits")
    body = value[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(value):
        raise BadInput(param, "mixed-case address with an invalid EIP-55 checksum")
    return to_checksum_address(value)


def integer(value: str | None, param: str, *, low: int, high: int, default: int | None = None) -> int:
    if value is None:
        if default is None:
            raise BadInput(param, "required")
        return default
    if not _INT.match(value):
        raise BadInput(param, "must be a non-negative integer")
    n = int(value)
    if not low <= n <= high:
        raise BadInput(param, f"must be between {low} and {high}")
    return n


def size_wad(value: str | None, param: str = "size") -> int:
    """A signed decimal size in base units (e.g. "1.5", "-0.25") as 1e18 fixed point (0 is the chain's
    ZeroAmount rule, explained like any other)."""
    if value is None or value == "":
        raise BadInput(param, "required")
    if not _DECIMAL.match(value):
        raise BadInput(param, "must be a decimal number such as 1.5 or -0.25 (negative: short)")
    neg = value.startswith("-")
    whole, _, frac = value.lstrip("-").partition(".")
    wad = int(whole) * 10**18 + int(frac.ljust(18, "0") or "0")
    wad = -wad if neg else wad
    if abs(wad) > MAX_SIZE_WAD:
        raise BadInput(param, "too large")
    return wad


def choice(value: str | None, param: str, options: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in options:
        raise BadInput(param, f"must be one of {', '.join(options)}")
    return value
