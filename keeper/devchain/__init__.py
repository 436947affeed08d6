"""Dev chain tooling: a local anvil node, the full deployment, and a seeded market simulator.

Nothing here is used in production: it stages a realistic book for the keeper to work on.
"""
