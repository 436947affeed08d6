"""Executor: signs and submits liquidation, funding and ADL transactions, and gets them mined."""
