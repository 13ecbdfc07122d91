"""In-process proof-of-stake nodes on real sockets (127.0.0.1), for network tests: a genesis with n
validators whose slots start now, and a node started in a trio nursery with p2p on a free port."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from ogpu_node.config import GenesisConfig, parse_genesis
from ogpu_node.consensus import ValidatorKey
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.node import Node, NodeConfig
from ogpu_node.node.network import P2PConfig
from ogpu_node.node.validator_key import randao_chain

RANDAO_LENGTH = 256


def validator_keys(n: int, seed: bytes = b"pos node") -> list[ValidatorKey]:
    keys = [Keypair.from_private_key(keccak(seed + b" %d" % i)) for i in range(n)]
    return [ValidatorKey(k, randao_chain(k.private_key, RANDAO_LENGTH)) for k in keys]


def pos_genesis(keys: list[ValidatorKey], *, chain_id: int = 4_343, slot_time: int = 1, slots_per_epoch: int = 4,
                start_in: float = 2.0, funded: tuple[bytes, ...] = ()) -> GenesisConfig:
    """A genesis whose validators are ``keys`` (staked and funded), slot 1 ``start_in`` seconds from now."""
    accounts = [k.address for k in keys] + list(funded)
    return parse_genesis({
        "config": {"chainId": chain_id},
        "alloc": {"0x" + a.hex(): {"balance": hex(10**24)} for a in accounts},
        "consensus": {
            "genesisTime": int(time.time() + start_in), "slotTime": slot_time, "slotsPerEpoch": slots_per_epoch,
            "randaoLength": RANDAO_LENGTH,
            "validators": [{"address": "0x" + k.address.hex(), "stake": hex(1_000 * 10**18),
                            "randaoTip": "0x" + k.randao.tip.hex()} for k in keys],
        },
    })


async def start_node(nursery: trio.Nursery, datadir: Path, genesis: GenesisConfig, key: ValidatorKey | None,
                     bootnodes: tuple[str, ...] = (), **config: Any) -> Node:
    """A node of ``genesis`` validating with ``key`` (None: a full node), HTTP and p2p on free ports."""
    node_config = NodeConfig(datadir=datadir, genesis=genesis, signer=None, http_port=0, ws_port=None, durable=False,
                             validator=key, p2p=P2PConfig(port=0, bootnodes=bootnodes), **config)
    return await nursery.start(Node(node_config).run)


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{what} within {timeout} s")
