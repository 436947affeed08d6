"""Zanbara Keeper: indexer, risk engine, executor and publisher for the Zanbara perpetual DEX."""

__version__ = "0.1.0"
