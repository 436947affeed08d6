"""Risk engine: the contracts' margin math mirrored off-chain, to the wei."""
