"""Helpers shared by the transaction-manager tests and their kill -9 submitter subprocess."""

from __future__ import annotations

from typing import Any

from eth_account import Account

from keeper.chain.rpc import RpcClient, RpcTransportError
from keeper.devchain.anvil import DEV_KEYS
from keeper.executor.keys import Signer

ANVIL_REAL = "contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
GWEI = 10**9
KEYS = {  # anvil's public dev accounts 0..4
    0: DEV_KEYS[0],
    1: DEV_KEYS[1],
    2: DEV_KEYS[2],
    3: DEV_KEYS[3],
    4: DEV_KEYS[4],
}
SINK = "0x0000000000000000000000000000000000005100"
REVERTER = "0x000000000000000000000000000000000000dEaD"
SINK_CODE = "0x00"  # STOP: accepts any call
REVERT_CODE = "0x63deadbeef60e01b60005260046000fd"  # revert with custom error selector 0xdeadbeef


def signer(i: int) -> Signer:
    acct = Account.from_key(KEYS[i])
    return Signer(acct.address, acct)


class CountingRpc(RpcClient):
    """An RpcClient that counts calls per method and can fail chosen sends (no answer)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.counts: dict[str, int] = {}
        self.sent: list[str] = []
        self.fail_sends = 0

    async def call(self, method: str, params: Any = None) -> Any:
        self.counts[method] = self.counts.get(method, 0) + 1
        if method == "eth_sendRawTransaction":
            self.sent.append(params[0])
            if self.fail_sends > 0:
                self.fail_sends -= 1
                raise RpcTransportError("simulated: connection reset before the answer")
        return await super().call(method, params)
