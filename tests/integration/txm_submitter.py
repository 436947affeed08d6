"""A keeper submitter for the kill -9 test: submits N transactions, printing each, then waits forever.

    python tests/integration/txm_submitter.py URL DB_URL N [--die-before-send K]

With ``--die-before-send K`` the process SIGKILLs itself right after journaling transaction K (0-based)
and before broadcasting it: the worst moment for a write-ahead journal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from txm_support import GWEI, SINK, CountingRpc, signer  # noqa: E402

from keeper.executor.journal import TxJournal  # noqa: E402
from keeper.executor.txmanager import TxManager  # noqa: E402


async def main() -> None:
    url, db, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    die = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--die-before-send" else -1
    rpc = CountingRpc(url)
    mgr = TxManager(rpc, signer(2), TxJournal(db), "liquidation", 31337, 100 * GWEI)
    await mgr.recover()
    orig_call = rpc.call

    for i in range(n):
        if i == die:

            async def dying(method: str, params: object = None) -> object:
                if method == "eth_sendRawTransaction":
                    os.kill(os.getpid(), signal.SIGKILL)
                return await orig_call(method, params)

            rpc.call = dying  # type: ignore[method-assign]
        h = await mgr.submit(SINK, "0x" + (b"run1" + i.to_bytes(4, "big")).hex(), gas=50_000, purpose=f"t{i}")
        print(f"SENT {h.nonce} {h.tx_hash}", flush=True)
    print("DONE", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
