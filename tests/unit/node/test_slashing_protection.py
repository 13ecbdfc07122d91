"""Slashing protection on disk (node/slashing_protection.py): the record survives restarts and crashes,
is bound to its chain and key, has one writer, and a validator restarted on a chain that lost what it
signed signs nothing conflicting (docs/consensus.md, "Slashing protection")."""

from __future__ import annotations

import resource
import shutil
import signal

import pytest
import trio

from ogpu_node.chain import Chain
from ogpu_node.config import parse_genesis
from ogpu_node.consensus import SigningRefused
from ogpu_node.consensus.protection import KEEP_RECORDS
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.db import LMDBStore
from ogpu_node.node.pos import ProofOfStake
from ogpu_node.node.slashing_protection import (
    SlashingProtection,
    SlashingProtectionError,
    protection_path,
    read_protection,
)
from ogpu_node.node.validator import ValidatorService
from ogpu_node.node.validator_key import load_validator_key, randao_chain

GENESIS_TIME = 1_700_000_000
SLOTS_PER_EPOCH = 4
RANDAO_LENGTH = 64
KEYPAIR = Keypair.from_private_key(keccak(b"slashing protection test"))
GENESIS_HASH = keccak(b"a genesis")
ADDRESS = KEYPAIR.address


def root(n: int) -> bytes:
    return keccak(n.to_bytes(8, "big"))


def test_the_record_outlives_the_process_and_refuses_after_a_restart(tmp_path):
    with SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH) as guard:
        guard.check_and_record_proposal(7, root(1))
        guard.check_and_record_attestation(2, 3, root(2))
        # On disk before the call returned: another reader sees it.
        _, _, seen = read_protection(protection_path(tmp_path, ADDRESS))
        assert seen.blocks == {7: root(1)} and seen.attestations == {3: (2, root(2))}
    with SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH) as restarted:
        with pytest.raises(SigningRefused, match="a block of slot 7 was signed with another signing root"):
            restarted.check_and_record_proposal(7, root(3))
        with pytest.raises(SigningRefused, match="double vote"):
            restarted.check_and_record_attestation(2, 3, root(4))
        with pytest.raises(SigningRefused, match="surrounds the signed 2→3"):
            restarted.check_and_record_attestation(1, 4, root(5))
        restarted.check_and_record_proposal(7, root(1))  # the same messages again: allowed, not recorded twice
        restarted.check_and_record_attestation(2, 3, root(2))
        restarted.check_and_record_proposal(8, root(6))
    assert protection_path(tmp_path, ADDRESS).stat().st_size == 28 + 32 + 20 + 3 * 62


def test_a_record_of_another_chain_or_key_is_refused(tmp_path):
    SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH).close()
    with pytest.raises(SlashingProtectionError, match=f"the chain with genesis 0x{GENESIS_HASH.hex()}, not this"):
        SlashingProtection.open(tmp_path, ADDRESS, keccak(b"another genesis"))
    other = b"\x11" * 20
    shutil.copy(protection_path(tmp_path, ADDRESS), protection_path(tmp_path, other))
    with pytest.raises(SlashingProtectionError, match=f"is the record of 0x{ADDRESS.hex()}, not 0x{other.hex()}"):
        SlashingProtection.open(tmp_path, other, GENESIS_HASH)


def test_one_writer_at_a_time(tmp_path):
    guard = SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH)
    with pytest.raises(SlashingProtectionError, match="in use by another process"):
        SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH)
    guard.close()
    SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH).close()


@pytest.mark.parametrize("tail", [b"\x01" * 10, bytes(62)], ids=["partial", "zeroed"])
def test_a_record_torn_by_a_crash_during_its_append_is_dropped(tmp_path, tail):
    with SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH) as guard:
        guard.check_and_record_proposal(7, root(1))
    path = protection_path(tmp_path, ADDRESS)
    whole = path.read_bytes()
    path.write_bytes(whole + tail)
    with SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH) as guard:
        assert path.read_bytes() == whole
        guard.check_and_record_proposal(8, root(2))  # appends on a record boundary again
    assert read_protection(path)[2].blocks == {7: root(1), 8: root(2)}


def test_a_damaged_record_stops_the_validator(tmp_path):
    with SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH) as guard:
        guard.check_and_record_proposal(7, root(1))
        guard.check_and_record_proposal(8, root(2))
    path = protection_path(tmp_path, ADDRESS)
    data = bytearray(path.read_bytes())
    data[28 + 52 + 5] ^= 1  # the first record's slot
    path.write_bytes(bytes(data))
    with pytest.raises(SlashingProtectionError, match="is damaged at record 0"):
        SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH)
    assert path.read_bytes() == bytes(data)
    path.write_bytes(b"something else")
    with pytest.raises(SlashingProtectionError, match="is not a slashing-protection record"):
        SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH)


def test_a_record_that_cannot_be_written_refuses_the_signature(tmp_path):
    guard = SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH)
    path = protection_path(tmp_path, ADDRESS)
    size = path.stat().st_size
    # The file may not grow (as on a full disk): the append fails, so nothing may be signed.
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        with pytest.raises(SigningRefused, match="could not be written .*nothing was signed"):
            guard.check_and_record_proposal(7, root(1))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert path.stat().st_size == size and guard.history().blocks == {}
    guard.check_and_record_proposal(7, root(2))  # space again: the record goes on
    guard.close()
    assert read_protection(path)[2].blocks == {7: root(2)}


def test_a_long_record_is_compacted_into_watermarks_that_still_refuse(tmp_path):
    with SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH) as guard:
        for n in range(1, 4 * KEEP_RECORDS + 2):  # one past the bound on the file's records
            if n % 2:
                guard.check_and_record_proposal(n, root(n))
            else:
                guard.check_and_record_attestation(n - 1, n, root(n))
    path = protection_path(tmp_path, ADDRESS)
    assert path.stat().st_size <= 28 + 52 + (2 * KEEP_RECORDS + 1) * 62
    _, _, history = read_protection(path)
    assert len(history.blocks) == len(history.attestations) == KEEP_RECORDS
    with SlashingProtection.open(tmp_path, ADDRESS, GENESIS_HASH) as guard:
        with pytest.raises(SigningRefused, match="watermark"):
            guard.check_and_record_proposal(1, root(1))  # dropped from the file, still refused
        with pytest.raises(SigningRefused, match="watermark"):
            guard.check_and_record_attestation(1, 2, root(2))
        guard.check_and_record_proposal(4 * KEEP_RECORDS + 3, root(0))


# -- a validator killed and restarted --

def _genesis():
    tip = randao_chain(KEYPAIR.private_key, RANDAO_LENGTH).tip
    return parse_genesis({
        "config": {"chainId": 99},
        "alloc": {},
        "consensus": {"genesisTime": GENESIS_TIME, "slotTime": 1, "slotsPerEpoch": SLOTS_PER_EPOCH,
                      "randaoLength": RANDAO_LENGTH,
                      "validators": [{"address": "0x" + ADDRESS.hex(), "stake": 10**21, "randaoTip": "0x" + tip.hex()}]},
    })


def _service(chain: Chain, datadir, guard) -> ValidatorService:
    pos = ProofOfStake(chain, chain.genesis.consensus, load_validator_key(datadir, KEYPAIR, RANDAO_LENGTH), guard)

    async def seal(attrs, build):
        executed = build(attrs, [])
        return chain.block_by_hash(executed.header.hash)

    return ValidatorService(pos, seal, wall_clock=lambda: GENESIS_TIME + trio.current_time())


async def test_a_validator_restarted_on_a_chain_that_lost_its_blocks_signs_nothing_conflicting(tmp_path, autojump_clock):
    first = Chain(LMDBStore(tmp_path / "chaindata", durable=False), _genesis())
    guard = SlashingProtection.open(tmp_path, ADDRESS, first.genesis_hash)
    service = _service(first, tmp_path, guard)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(2 * SLOTS_PER_EPOCH + 0.5)  # into slot 8: blocks 1-8, votes in epochs 1 and 2
        nursery.cancel_scope.cancel()  # killed
    guard.close()  # as the process's death would
    first.store.close()
    _, _, signed = read_protection(protection_path(tmp_path, ADDRESS))
    assert sorted(signed.blocks) == list(range(1, 9)) and sorted(signed.attestations) == [1, 2]
    vote_slot = service.pos.core.duties(ADDRESS, 1)[1]

    # Restarted on a chain database that lost the blocks (wiped, or restored from an old backup).
    lost = Chain(LMDBStore(tmp_path / "restored", durable=False), _genesis())
    guard = SlashingProtection.open(tmp_path, ADDRESS, lost.genesis_hash)
    restarted = _service(lost, tmp_path, guard)
    assert await restarted.propose(2) is None  # slot 2 on genesis: another block of a slot it signed
    assert lost.head.block_number == 0  # nothing committed
    assert restarted.pos.core.attest(vote_slot) is None  # epoch 1 voted for another head
    assert read_protection(protection_path(tmp_path, ADDRESS))[2].blocks == signed.blocks

    # The same key without the record would have signed both: the refusals are the record's.
    unguarded = _service(lost, tmp_path / "elsewhere", None)
    assert unguarded.pos.core.attest(vote_slot) is not None
    # And the restarted validator goes on from the slot it is in.
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.run)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    guard.close()
    assert lost.head.block_number == 1 and lost.head.timestamp == GENESIS_TIME + 9
    assert 9 in read_protection(protection_path(tmp_path, ADDRESS))[2].blocks
    lost.store.close()
