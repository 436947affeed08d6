"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Numeric, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["BigInt", "JsonDoc"]


class BigInt(TypeDecorator[int]):
    """A lossless uint256/int256: NUMERIC(78,0) on PostgreSQL, decimal TEXT elsewhere; ``int`` in and out.

    On SQLite the values are text, so SQL comparison and ordering on these columns are textual, and
    SQL SUM would go through floats: compare for equality only and do arithmetic in Python.
    """

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(78, 0, asdecimal=True))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, Decimal) and value == value.to_integral_value() or isinstance(value, str):
                value = int(value)
            else:
                raise TypeError(f"BigInt column takes an int, got {type(value).__name__}")
        if dialect.name == "postgresql":
            return Decimal(value)
        return str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(value)

    @property
    def python_type(self) -> type[int]:
        return int


#: JSON documents: JSONB on PostgreSQL, JSON (TEXT) on SQLite; serialized by the engine's orjson hooks.
JsonDoc = JSON().with_variant(JSONB(), "postgresql")
