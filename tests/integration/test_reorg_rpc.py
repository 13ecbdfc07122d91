"""A head switch as RPC clients see it (issue 11, must show), on a real in-process Node over real
sockets: HTTP for calls and polling filters, a WebSocket for subscriptions.

Branch A is the node's own block 1 holding T, a Stake.stake call that logs Staked. Branch B, two blocks
without T, is built on a second chain of the same genesis and imported as side blocks; then
`Node.adopt_head` switches to B's tip, as fork choice would. Blocks are sealed only when the test says
(a block time of an hour), so each step is observed before the next.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from eth_utils import keccak
from txfactory import sign_tx
from websockets.sync.client import ClientConnection, connect

from ogpu_node.chain import Chain
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.contracts.addresses import STAKE
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import decode_block, encode_block
from ogpu_node.execution.state import BlockAttributes
from ogpu_node.node import Node, NodeConfig
from tests.rpccall import rpc

pytestmark = pytest.mark.timeout(120)

STAKE_HEX = "0x" + STAKE.hex()
STAKED = "0x" + keccak(text="Staked(address,uint256,uint256)").hex()


class Subscriptions:
    """One WebSocket connection's subscriptions; notifications kept apart from replies."""

    def __init__(self, url: str) -> None:
        self.connection: ClientConnection = connect(url, proxy=None, open_timeout=30, close_timeout=5)
        self.ids: dict[str, str] = {}  # subscription id -> name

    def subscribe(self, name: str, *params: Any) -> None:
        self.connection.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": list(params)}))
        reply = json.loads(self.connection.recv(timeout=30))
        self.ids[reply["result"]] = name

    def until_head(self, number: int) -> list[tuple[str, dict[str, Any]]]:
        """(name, result) of every notification up to the `heads` one of block `number` (subscribed
        last, so it comes after the others of its batch)."""
        seen = []
        while True:
            message = json.loads(self.connection.recv(timeout=30))
            params = message["params"]
            seen.append((self.ids[params["subscription"]], params["result"]))
            if seen[-1][0] == "heads" and int(params["result"]["number"], 16) == number:
                return seen


def only(name: str, seen: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [result for kind, result in seen if kind == name]


async def test_a_reorg_returns_the_transaction_and_reports_its_logs_removed(tmp_path):
    accounts = derive_dev_accounts(3)
    genesis = load_genesis(DEV_GENESIS)
    config = NodeConfig(datadir=tmp_path / "node", genesis=genesis, signer=accounts[0], block_time=3600,
                        http_port=0, ws_port=0, durable=False)
    side_store = LMDBStore(tmp_path / "side")
    side = Chain(side_store, genesis)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(config).run)
        url, ws_url = f"http://127.0.0.1:{node.http_port}", f"ws://127.0.0.1:{node.ws_port}"

        async def call(method: str, *params: Any) -> Any:
            return await trio.to_thread.run_sync(rpc, url, method, *params)

        subs = await trio.to_thread.run_sync(Subscriptions, ws_url)
        try:
            await trio.to_thread.run_sync(subs.subscribe, "logs", "logs", {"address": STAKE_HEX})
            await trio.to_thread.run_sync(subs.subscribe, "heads", "newHeads")
            log_filter = await call("eth_newFilter", {"address": STAKE_HEX})
            block_filter = await call("eth_newBlockFilter")

            # Branch A: T in the node's block 1.
            t = sign_tx(accounts[1], 0, to=STAKE, value=10**18, data=keccak(text="stake()")[:4], gas=200_000)
            assert await call("eth_sendRawTransaction", t.raw_hex) == t.hash_hex
            a1 = await node.seal_block()
            receipt = await call("eth_getTransactionReceipt", t.hash_hex)
            assert receipt["blockHash"] == "0x" + a1.hash.hex() and receipt["status"] == "0x1"
            [t_log] = receipt["logs"]
            assert t_log["topics"][0] == STAKED
            assert await call("eth_getFilterChanges", log_filter) == [t_log]
            assert await call("eth_getFilterChanges", block_filter) == ["0x" + a1.hash.hex()]
            seen = await trio.to_thread.run_sync(subs.until_head, 1)
            assert only("logs", seen) == [t_log]

            # Branch B: two blocks without T (another account's transfer), imported beside A.
            other = sign_tx(accounts[2], 0, to=b"\x22" * 20, value=5).decoded
            b_blocks = []
            for txs in ([other], []):
                attrs = BlockAttributes(timestamp=side.head.timestamp + 1, coinbase=b"\x0b" * 20, mix_hash=b"\x07" * 32)
                b_blocks.append(side.build_block(attrs, txs).block)
            for block in b_blocks:
                await trio.to_thread.run_sync(node.chain.import_block, decode_block(encode_block(block)))
            assert await call("eth_blockNumber") == "0x1"  # side blocks do not move the head

            change = await node.adopt_head(b_blocks[-1].hash)
            assert [b.hash for b in change.abandoned] == [a1.hash]
            b_hashes = ["0x" + b.hash.hex() for b in b_blocks]

            # What clients see: the receipt is gone, T waits in the pool again, its log is removed.
            assert await call("eth_getTransactionReceipt", t.hash_hex) is None
            pending = await call("eth_getTransactionByHash", t.hash_hex)
            assert pending["hash"] == t.hash_hex and pending["blockHash"] is None
            assert (await call("eth_getBlockByNumber", "latest", False))["hash"] == b_hashes[-1]
            removed = {**t_log, "removed": True}
            assert await call("eth_getFilterChanges", log_filter) == [removed]
            assert await call("eth_getFilterChanges", block_filter) == b_hashes
            seen = await trio.to_thread.run_sync(subs.until_head, 2)
            assert only("logs", seen) == [removed]
            assert [head["hash"] for head in only("heads", seen)] == b_hashes

            # The next block mines T again, on B.
            b3 = await node.seal_block()
            assert b3.header.parent_hash == b_blocks[-1].hash
            receipt = await call("eth_getTransactionReceipt", t.hash_hex)
            assert receipt["blockHash"] == "0x" + b3.hash.hex() and receipt["blockNumber"] == "0x3"
            [again] = receipt["logs"]
            assert again["removed"] is False and again["topics"] == t_log["topics"]
            assert await call("eth_getFilterChanges", log_filter) == [again]
            seen = await trio.to_thread.run_sync(subs.until_head, 3)
            assert only("logs", seen) == [again]
        finally:
            await trio.to_thread.run_sync(subs.connection.close)
            side_store.close()
        nursery.cancel_scope.cancel()
