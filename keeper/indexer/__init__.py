"""The indexer: the DEX's contract events into the store, exact, reorg-safe and crash-safe.

* :mod:`keeper.indexer.fetch` - raw JSON-RPC (aiohttp + orjson), adaptive ``eth_getLogs`` ranges;
* :mod:`keeper.indexer.decode` - topic0 -> compiled decoder from the ABIs (no web3 on the hot path);
* :mod:`keeper.indexer.derive` - histories and current state from events, forward and on rollback;
* :mod:`keeper.indexer.writer` - the database side: one transaction per range, with the checkpoint;
* :mod:`keeper.indexer.sync` - the runner: pipelined backfill, live tail, reorg window, confirmations;
* :mod:`keeper.indexer.service` - wiring from settings (``keeper index``, ``keeper status``).
"""
