"""Range sync between real nodes on 127.0.0.1 (docs/network.md, "Sync"): a new node catches up with a
chain of several batches through the one import path, to the same head and finalized block; killed in
the middle of it, it restarts on its datadir from its last committed block, so no block is downloaded
twice; a node whose blocks were built on another branch fetches the peers' branch from its finalized
block."""

from __future__ import annotations

import pytest
import trio
from pos_nodes import pos_genesis, start_node, validator_keys, wait_until
from validator_harness import in_process_validator

from ogpu_node.chain import Chain
from ogpu_node.db import LMDBStore
from ogpu_node.p2p import limits

BLOCKS = 3 * limits.MAX_BLOCKS_PER_REQUEST + 10


def build_chain(datadir, genesis, key, slots) -> tuple[bytes, int]:
    """A node's chain of one block per slot in ``slots``, made offline by its validator (proposing and
    attesting as on time): (head hash, finalized epoch)."""
    store = LMDBStore(datadir / "chaindata", durable=False)
    try:
        chain = Chain(store, genesis)
        service = in_process_validator(chain, key.keypair, datadir, key.randao.length)

        async def make() -> None:
            for slot in slots:
                assert await service.propose(slot) is not None
                service.attest(slot)

        trio.run(make)
        return chain.head.hash, service.pos.core.finalized.epoch
    finally:
        store.close()


@pytest.mark.timeout(240)
async def test_a_new_node_syncs_several_batches_and_resumes_after_a_kill(tmp_path):
    keys = validator_keys(1, b"sync")
    genesis = pos_genesis(keys, start_in=-10 * BLOCKS)  # every slot built below is in the past
    head, finalized_epoch = await trio.to_thread.run_sync(build_chain, tmp_path / "source", genesis, keys[0],
                                                          range(1, BLOCKS + 1))
    assert finalized_epoch > 0
    served: list[int] = []
    async with trio.open_nursery() as nursery:
        source = await start_node(nursery, tmp_path / "source", genesis, None)
        assert source.chain.head.hash == head
        ranges = source.network._range_messages

        def counted(start: int, count: int) -> list[bytes]:
            messages = ranges(start, count)
            served.extend(range(start, start + len(messages)))
            return messages

        source.network._range_messages = counted
        boot = (source.network.host.multiaddr,)

        # A node killed (its nursery cancelled) once it has committed some blocks.
        with trio.CancelScope() as first_run:
            async with trio.open_nursery() as inner:
                joiner = await start_node(inner, tmp_path / "joiner", genesis, None, bootnodes=boot)
                await wait_until(lambda: joiner.chain.head.block_number >= limits.MAX_BLOCKS_PER_REQUEST, 60,
                                 "the joiner imported a first batch")
                first_run.cancel()
        committed = served.copy()
        assert 0 < len(committed) < BLOCKS + limits.MAX_BLOCKS_PER_REQUEST * 4

        # Restarted on its datadir: it goes on from its committed head and reaches the source's head.
        restarted = await start_node(nursery, tmp_path / "joiner", genesis, None, bootnodes=boot)
        resumed_from = restarted.chain.head.block_number
        assert resumed_from >= limits.MAX_BLOCKS_PER_REQUEST
        await wait_until(lambda: restarted.chain.head.hash == head, 90, "the restarted node reached the head")
        later = served[len(committed):]
        assert min(later) > resumed_from  # nothing it had committed was asked for again
        assert restarted.pos.core.finalized == source.pos.core.finalized
        assert restarted.network.syncing() is None
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(240)
async def test_a_node_on_an_abandoned_branch_fetches_the_peers_branch_from_its_finalized_block(tmp_path):
    keys = validator_keys(1, b"sync fork")
    genesis = pos_genesis(keys, start_in=-10 * BLOCKS)
    common = range(1, 41)
    # Both share blocks 1-40; the other node's own branch then took slots 41-44, which the source
    # skipped (its chain goes on from slot 45): the other's head (44) is not on the source's chain.
    head, _ = await trio.to_thread.run_sync(build_chain, tmp_path / "source", genesis, keys[0],
                                            [*common, *range(45, 45 + 100)])
    await trio.to_thread.run_sync(build_chain, tmp_path / "other", genesis, keys[0], [*common, *range(41, 45)])
    async with trio.open_nursery() as nursery:
        source = await start_node(nursery, tmp_path / "source", genesis, None)
        other = await start_node(nursery, tmp_path / "other", genesis, None, bootnodes=(source.network.host.multiaddr,))
        await wait_until(lambda: other.chain.head.hash == head, 90, "the other node switched to the source's branch")
        assert other.pos.core.finalized == source.pos.core.finalized
        nursery.cancel_scope.cancel()
