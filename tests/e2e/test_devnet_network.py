"""A devnet as real processes on 127.0.0.1 (issue 13, docs/network.md): `ogpu-node devnet --validators 4`
finalizes with every node agreeing, each node finds all the others from the one bootnode, a transaction
sent to one node is mined and its receipt is on all; a full node started later with the printed join
command syncs the chain (eth_syncing reports it) and then follows it; a validator killed with SIGKILL
leaves three that keep finalizing, and, restarted with its own command on its own datadir, it catches
up and agrees with them again. A node started before its bootnode connects to it at its next dial
(py-libp2p would refuse to redial a failed peer for 60 s: Network._dial lifts that).

Slots of 1 s, 4 to an epoch (the devnet's), so a devnet finalizes within seconds of its first slot.
Everything is awaited by polling JSON-RPC against deadlines; a failure shows each node's log tail."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e.devnet_run import (
    Devnet,
    Processes,
    Run,
    agreed_finality,
    block_hash,
    finalized,
    free_base_port,
    head,
    peer_count,
    rpc,
    wait_until,
)
from txfactory import sign_tx

from ogpu_node.cli.devnet_files import make_devnet
from ogpu_node.config import load_genesis
from ogpu_node.p2p.identity import node_key, peer_id

VALIDATORS = 4
SLOT_TIME = 1
TRANSFER = 12_345


@pytest.fixture
def processes():
    started = Processes()
    yield started
    started.stop_all()


def _devnet(processes: Processes, tmp_path: Path, base_port: int = 0) -> tuple[Devnet, int]:
    """A new 4-validator devnet, and its slots per epoch."""
    devnet = processes.devnet(tmp_path / "devnet", "--validators", str(VALIDATORS), "--slot-time", str(SLOT_TIME),
                              "--base-port", str(base_port))
    assert len(devnet.urls) == VALIDATORS
    consensus = load_genesis(devnet.root / "genesis.json").consensus
    assert consensus is not None and consensus.slot_time == SLOT_TIME
    return devnet, consensus.slots_per_epoch


def _finality_past(urls: list[str], number: int, root: Path, timeout: float = 90) -> tuple[int, str]:
    """Wait until every node in ``urls`` reports one finalized block above ``number``; that block."""
    return wait_until(f"{len(urls)} nodes agree on a finalized block above {number}",
                      lambda: (f := agreed_finality(urls)) and f[0] > number and f, timeout, root)


def _peer_ids(url: str) -> list[str]:
    return sorted(peer["id"] for peer in rpc(url, "admin_peers"))


def _same_block_at_common_height(urls: list[str]) -> tuple[int, str] | None:
    """The block every node has at the lowest of their heads, when they all have the same one there."""
    number = min(head(url) for url in urls)
    hashes = {block_hash(url, number) for url in urls}
    return (number, hashes.pop()) if len(hashes) == 1 and number > 0 else None


@pytest.mark.timeout(240)
def test_four_validators_find_each_other_finalize_together_and_carry_a_transaction(tmp_path, processes, dev_accounts):
    devnet, _ = _devnet(processes, tmp_path)
    root, urls = devnet.root, devnet.urls

    # Nodes 1-3 were given node 0 alone; each learns the others from its peers (/ogpu/1/peers).
    ids = [rpc(url, "admin_nodeInfo")["id"] for url in urls]
    assert len(set(ids)) == VALIDATORS
    for i, url in enumerate(urls):
        others = sorted(ids[:i] + ids[i + 1:])
        wait_until(f"node {i} connected to the three others {others}",
                   lambda url=url, others=others: _peer_ids(url) == others, 60, root,
                   state=lambda url=url: rpc(url, "admin_peers"))
        assert peer_count(url) == VALIDATORS - 1

    number, hash_ = _finality_past(urls, 0, root)
    assert all(block_hash(url, number) == hash_ for url in urls)  # and on each node's canonical chain

    # A transfer sent to node 3 reaches whichever validator proposes next, by gossip.
    sender, receiver = dev_accounts[0], dev_accounts[1]
    chain_id = int(rpc(urls[3], "eth_chainId"), 16)
    nonce = int(rpc(urls[3], "eth_getTransactionCount", "0x" + sender.address.hex(), "pending"), 16)
    tx = sign_tx(sender, nonce, to=receiver.address, value=TRANSFER, chain_id=chain_id)
    assert rpc(urls[3], "eth_sendRawTransaction", tx.raw_hex) == tx.hash_hex
    receipts = wait_until("the transaction's receipt on all four nodes", lambda: (
        r := [rpc(url, "eth_getTransactionReceipt", tx.hash_hex) for url in urls]) and all(r) and r, 60, root)
    assert {r["status"] for r in receipts} == {"0x1"}
    assert len({(r["blockHash"], r["blockNumber"], r["transactionIndex"]) for r in receipts}) == 1, receipts
    mined = int(receipts[0]["blockNumber"], 16)
    receiver_hex = "0x" + receiver.address.hex()
    for url in urls:
        assert block_hash(url, mined) == receipts[0]["blockHash"]
        before, after = (int(rpc(url, "eth_getBalance", receiver_hex, hex(n)), 16) for n in (mined - 1, mined))
        assert after - before == TRANSFER

    # The block holding it becomes final on every node, the same block.
    number, hash_ = _finality_past(urls, mined - 1, root)
    assert all(block_hash(url, mined) == receipts[0]["blockHash"] for url in urls)
    assert all(block_hash(url, number) == hash_ for url in urls)


@dataclass(frozen=True)
class SyncAnswer:
    before: int  # the node's head (eth_blockNumber) just before eth_syncing was asked
    answer: bool | dict[str, str]  # what eth_syncing said
    after: int  # its head just after

    def progress(self) -> tuple[int, int, int]:
        """(startingBlock, currentBlock, highestBlock) of a progress answer."""
        assert isinstance(self.answer, dict), self.answer
        return tuple(int(self.answer[k], 16) for k in ("startingBlock", "currentBlock", "highestBlock"))


def _watch_sync(node: Run, target: int) -> list[SyncAnswer]:
    """Every eth_syncing answer of ``node`` from its first moments until it is not syncing and its head
    has reached ``target``, each between two readings of its head; asked as fast as it answers, since a
    chain of a few dozen blocks syncs within a second or two."""
    answers: list[SyncAnswer] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        before = head(node.url)
        answer = rpc(node.url, "eth_syncing")
        answers.append(SyncAnswer(before, answer, head(node.url)))
        if answer is False and answers[-1].after >= target:
            return answers
    pytest.fail(f"the joined node did not catch up with head {target} within 120 s; eth_syncing said "
                f"{answers[-5:]}")


def _check_progress(answers: list[SyncAnswer]) -> None:
    """eth_syncing reported the sync, some answers in the middle of the import, each with the node's head
    as currentBlock (rpc/net.py: 'our head now'; it once stayed at the head the sync began at), then false."""
    progress = [a for a in answers if a.answer is not False]
    assert progress, f"eth_syncing never reported progress: {answers[:20]}"
    for a in progress:
        starting, current, highest = a.progress()
        assert starting <= current <= highest and starting < highest, a
        assert a.before <= current <= a.after, a
    assert any(a.before > a.progress()[0] for a in progress), progress  # seen after the first block imported
    assert answers[-1].answer is False


@pytest.mark.timeout(240)
def test_a_full_node_joined_later_syncs_the_chain_and_follows_it(tmp_path, processes):
    devnet, slots_per_epoch = _devnet(processes, tmp_path)
    root, urls = devnet.root, devnet.urls
    # A chain worth syncing: finalized, and a few epochs long.
    _finality_past(urls, 0, root)
    wait_until("four epochs of blocks", lambda: head(urls[0]) >= 4 * slots_per_epoch, 60, root)

    # The command the devnet printed, as printed (free ports, node 4's datadir, no --keystore).
    args = devnet.join_args
    assert args[0] == "run" and "--keystore" not in args and args[args.index("--datadir") + 1] == str(root / "node4")
    joined = processes.run(args, tmp_path / "joined.log")
    _check_progress(_watch_sync(joined, head(urls[0])))

    # The same chain: the validators' blocks and finalized block.
    wait_until("the joined node has the validators' block at their common height",
               lambda: _same_block_at_common_height([*urls, joined.url]), 60, root)
    validators_final = finalized(urls[0])
    number, hash_ = _finality_past([*urls, joined.url], validators_final[0] - 1, root)
    assert block_hash(joined.url, validators_final[0]) == validators_final[1]

    # Then it follows: new blocks arrive by gossip, the same as the validators', finality too.
    synced = head(joined.url)
    wait_until("the joined node follows two more epochs", lambda: head(joined.url) >= synced + 2 * slots_per_epoch,
               60, root)
    followed = wait_until("the joined node agrees with the validators past its sync",
                          lambda: (b := _same_block_at_common_height([*urls, joined.url])) and b[0] > synced and b,
                          60, root)
    assert block_hash(joined.url, followed[0]) == block_hash(urls[0], followed[0])
    _finality_past([*urls, joined.url], number, root)
    assert rpc(joined.url, "eth_syncing") is False
    assert peer_count(joined.url) >= 1
    wait_until("the joined node connected to all four validators", lambda: peer_count(joined.url) == VALIDATORS,
               30, root)


@pytest.mark.timeout(300)
def test_three_validators_finalize_without_a_killed_fourth_which_catches_up_when_restarted(tmp_path, processes):
    # Ports the restarted nodes can count on getting back (see free_base_port).
    devnet, slots_per_epoch = _devnet(processes, tmp_path, free_base_port())
    root = devnet.root
    # The devnet stops every node when one dies: the test runs the devnet's own node commands instead.
    commands = devnet.node_commands()
    assert sorted(commands) == list(range(VALIDATORS))
    assert processes.stop_devnet(devnet) == 0, devnet.err_path.read_text()
    nodes = [processes.run(commands[i], root / f"node{i}" / "node.log") for i in range(VALIDATORS)]
    urls = [node.url for node in nodes]
    assert urls == devnet.urls  # the same ports: the same command
    before_kill = _finality_past(urls, 0, root)

    victim = 2
    processes.kill(nodes[victim])
    rest = [url for i, url in enumerate(urls) if i != victim]
    killed_at = wait_until("the three's common finalized block", lambda: agreed_finality(rest), 30, root)
    assert killed_at[0] >= before_kill[0]
    # Finality goes on with 3/4 of the stake: at least two more epochs' worth, the same on the three.
    kept = _finality_past(rest, killed_at[0] + 2 * slots_per_epoch, root)
    assert not nodes[victim].alive()

    restarted = processes.run(commands[victim], root / f"node{victim}" / "node.log")
    assert restarted.url == urls[victim]
    others_head = max(head(url) for url in rest)
    wait_until(f"node {victim} catches up to the others' head {others_head}",
               lambda: head(restarted.url) >= others_head, 90, root)
    assert block_hash(restarted.url, kept[0]) == kept[1]
    agreed = _finality_past(urls, kept[0], root)
    assert all(block_hash(url, agreed[0]) == agreed[1] for url in urls)
    wait_until("all four at one block at their common height",
               lambda: (b := _same_block_at_common_height(urls)) and b[0] >= others_head and b, 60, root)


@pytest.mark.timeout(120)
def test_a_node_started_before_its_bootnode_connects_at_its_next_dial(tmp_path, processes):
    root = tmp_path / "devnet"
    make_devnet(root, 1, 0, SLOT_TIME)  # the files only: the test runs the two nodes
    genesis, port = str(root / "genesis.json"), free_base_port()
    bootnode_id = peer_id(node_key(root / "node0"))
    bootnode = f"/ip4/127.0.0.1/tcp/{port}/p2p/{bootnode_id}"
    node = processes.run(["run", "--genesis", genesis, "--bootnodes", bootnode, "--datadir", str(root / "node1"),
                          "--http.port", "0", "--ws.port", "0", "--port", "0"], tmp_path / "node.log")
    failed = re.compile(rf"dial {re.escape(bootnode)} failed")
    wait_until("the node's dial to its bootnode fails (nothing listens there yet)",
               lambda: failed.search(node.log.read_text()), 30, root)

    processes.run(["run", "--genesis", genesis, "--datadir", str(root / "node0"), "--http.port", "0", "--ws.port",
                   "0", "--port", str(port)], tmp_path / "bootnode.log")
    # Its banner comes after its p2p host listens: from here on a dial to it can only succeed.
    since = node.log.stat().st_size
    connected = re.compile(rf"peer {bootnode_id} connected")

    def next_dial() -> str | None:
        text = node.log.read_text()[since:]
        outcomes = [(m.start(), m.group()) for pattern in (failed, connected) if (m := pattern.search(text))]
        return min(outcomes)[1] if outcomes else None

    outcome = wait_until("the node's next dial to its bootnode", next_dial, 60, root)
    assert connected.fullmatch(outcome), outcome
    assert _peer_ids(node.url) == [bootnode_id]
