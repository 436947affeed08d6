# ruff: noqa: E501  (HTML/JS/schema literals read better unwrapped)
"""The OpenAPI 3 document of the public JSON API (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any

ADDRESS = {
    "type": "string",
    "pattern": "^0x([0-9a-f]{40}|[0-9A-F]{40})$",
    "description": "0x + 40 hex digits, all lower or upper case; a mixed-case address is accepted only with a "
    "valid EIP-55 checksum",
    "example": "0x45c9653af2a9d81ac8ae2085ed97a6c4f11b9466",
}
INT_STR = {"type": "string", "pattern": "^-?[0-9]+$", "description": "an exact integer in chain units"}
MONEY = {
    "type": "object",
    "nullable": True,
    "properties": {"raw": INT_STR, "usd": {"type": "string"}},
    "required": ["raw", "usd"],
    "description": "collateral units (6 decimals) and the exact dollar amount",
}
STAMP = {
    "type": "object",
    "properties": {
        "block_number": {"type": "integer"},
        "block_hash": {"type": "string"},
        "block_timestamp": {"type": "integer"},
        "block_time": {"type": "string"},
        "read_at": {"type": "string"},
        "age_seconds": {"type": "number"},
        "stale": {"type": "boolean"},
    },
    "required": ["block_number", "block_hash", "block_timestamp", "stale"],
}
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
    "required": ["error", "status"],
}


ANOMALY_FLAG = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "rule": {"type": "string", "enum": ["oi_share", "open_close_loop", "funding_source", "oracle_jump"]},
        "rule_text": {"type": "string"},
        "subject": {"type": "string"},
        "account": {"type": "string", "nullable": True},
        "market_id": {"type": "integer", "nullable": True},
        "market": {"type": "string", "nullable": True},
        "block_number": {"type": "integer"},
        "detail": {"type": "object"},
        "created": {"type": "number"},
    },
    "required": ["id", "rule", "subject", "block_number", "detail"],
}


def _resp(desc: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "invalid input", 404: "not found", 429: "rate limited", 503: "unavailable"}
    return {str(c): _resp(names[c], {"$ref": "#/components/schemas/Error"}) for c in codes}


def _q(name: str, schema: dict[str, Any], desc: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": desc}


def _paging(max_page_size: int) -> list[dict[str, Any]]:
    """The ``page``/``page_size`` query parameters every paged list takes."""
    return [
        _q("page", {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}, "page"),
        _q("page_size", {"type": "integer", "minimum": 1, "maximum": max_page_size, "default": 20},
           "items per page"),
    ]  # fmt: skip


def _page(item: dict[str, Any], **extra: dict[str, Any]) -> dict[str, Any]:
    """One page of a paged list: its position, the total, and the items."""
    return {
        "type": "object",
        "properties": {"page": {"type": "integer"}, "page_size": {"type": "integer"},
                       "total": {"type": "integer"}, **extra, "items": {"type": "array", "items": item}},
        "required": ["page", "page_size", "total", "items"],
    }  # fmt: skip


def openapi_document(max_page_size: int = 100) -> dict[str, Any]:
    obj = {"type": "object"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Zanbara public API",
            "version": "1",
            "description": "Read-only. Every figure is stamped with the block it was read at (number, hash, "
            "time): check it with eth_call at that block. Integers are exact, as decimal strings.",
        },
        "paths": {
            "/api/insurance-fund": {
                "get": {
                    "summary": "Latest insurance-fund snapshot",
                    "operationId": "insuranceFund",
                    "responses": {
                        "200": _resp("the latest snapshot", {"$ref": "#/components/schemas/Fund"}),
                        **_errors(429, 503),
                    },
                }
            },
            "/api/insurance-fund/history": {
                "get": {
                    "summary": "Fund balance and coverage over an hour, a day or a week (block time)",
                    "operationId": "insuranceFundHistory",
                    "parameters": [
                        _q("range", {"type": "string", "enum": ["hour", "day", "week"]}, "window")
                    ],
                    "responses": {
                        "200": _resp(
                            "points, oldest first",
                            {
                                "type": "object",
                                "properties": {
                                    "range": {"type": "string"},
                                    "seconds": {"type": "integer"},
                                    "points": {"type": "array", "items": obj},
                                },
                                "required": ["range", "points"],
                            },
                        ),
                        **_errors(400, 429),
                    },
                }
            },  # fmt: skip
            "/api/markets": {
                "get": {
                    "summary": "Per market: mark, oracle, open interest vs caps, funding, circuit breaker, ADL",
                    "operationId": "markets",
                    "responses": {
                        "200": _resp(
                            "markets at the latest snapshot's block",
                            {
                                "type": "object",
                                "properties": {
                                    "stamp": {**STAMP, "nullable": True},
                                    "markets": {"type": "array", "items": obj},
                                },
                                "required": ["markets"],
                            },
                        ),
                        **_errors(429),
                    },
                }
            },  # fmt: skip
            "/api/liquidations": {
                "get": {
                    "summary": "Liquidations, newest first, paged",
                    "operationId": "liquidations",
                    "parameters": _paging(max_page_size),
                    "responses": {
                        "200": _resp("one page", _page(obj)),
                        **_errors(400, 429),
                    },
                }
            },  # fmt: skip
            "/api/accounts/{address}": {
                "get": {
                    "summary": "An account: collateral, tier and limits, margin ratio, warning tier, liquidation prices",
                    "operationId": "account",
                    "parameters": [{"name": "address", "in": "path", "required": True, "schema": ADDRESS}],
                    "responses": {
                        "200": _resp(
                            "the account",
                            {
                                "type": "object",
                                "properties": {
                                    "address": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                                    "known": {"type": "boolean"},
                                    "positions": {"type": "array", "items": obj},
                                },
                                "required": ["address", "known", "positions"],
                            },
                        ),
                        **_errors(400, 404, 429),
                    },
                }
            },  # fmt: skip
            "/api/anomalies": {
                "get": {
                    "summary": "Anomaly watch flags (for review; the keeper never acts on them), newest first, paged",
                    "operationId": "anomalies",
                    "parameters": _paging(max_page_size),
                    "responses": {
                        "200": _resp(
                            "one page of flags",
                            _page({"$ref": "#/components/schemas/AnomalyFlag"}, note={"type": "string"}),
                        ),
                        **_errors(400, 429),
                    },
                }
            },  # fmt: skip
            "/api/whales": {
                "get": {
                    "summary": "Hourly anonymized distribution of the largest positions",
                    "operationId": "whales",
                    "responses": {
                        "200": _resp(
                            "the latest whale snapshot",
                            {
                                "type": "object",
                                "properties": {"markets": {"type": "array", "items": obj}},
                                "required": ["markets"],
                            },
                        ),
                        **_errors(429),
                    },
                }
            },  # fmt: skip
            "/api/explain": {
                "get": {
                    "summary": "Would this order pass? Simulates Exchange.trade from the account and names the rule",
                    "operationId": "explain",
                    "parameters": [
                        _q("account", ADDRESS, "the trader", True),
                        _q(
                            "market",
                            {"type": "integer", "minimum": 0, "maximum": 1_000_000},
                            "market id",
                            True,
                        ),
                        _q(
                            "size",
                            {"type": "string", "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,18})?$"},
                            "signed size in base units (negative: short)",
                            True,
                        ),
                        _q("leverage", {"type": "integer", "minimum": 0, "maximum": 1000}, "leverage", True),
                    ],
                    "responses": {
                        "200": _resp("the verdict", {"$ref": "#/components/schemas/Explain"}),
                        **_errors(400, 429, 503),
                    },
                }
            },  # fmt: skip
        },
        "components": {
            "schemas": {
                "Error": ERROR,
                "Stamp": STAMP,
                "AnomalyFlag": ANOMALY_FLAG,
                "Money": MONEY,
                "Fund": {
                    "type": "object",
                    "properties": {
                        "stamp": {"$ref": "#/components/schemas/Stamp"},
                        "balance": MONEY,
                        "total_position_value": MONEY,
                        "coverage": {"type": "object", "nullable": True},
                        "last_24h": obj,
                        "display": obj,
                    },
                    "required": ["stamp", "balance", "total_position_value", "last_24h"],
                },
                "Explain": {
                    "type": "object",
                    "properties": {
                        "passes": {"type": "boolean"},
                        "layer": {"type": "string", "nullable": True},
                        "rule": {"type": "string", "nullable": True},
                        "detail": {"type": "string"},
                        "what_to_do": {"type": "string"},
                        "link": {"type": "string"},
                    },
                    "required": ["passes", "detail", "what_to_do", "link"],
                },
            }
        },
    }
