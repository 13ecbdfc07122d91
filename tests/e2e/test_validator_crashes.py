"""A real validator process (`ogpu-node run --keystore`, the one validator of a proof-of-stake genesis)
killed with SIGKILL at seeded-random moments 20 times, restarted on the same datadir each time, signs
nothing slashable (issue 12, must show).

The kill moments spread over a slot's phases: right after its start (while the block is built and
signed), about a third into it (the attestation), and between. Some restarts begin on a chain database
rolled back to a copy taken at an earlier kill, as after restoring a backup, while the
slashing-protection record stays: the chain then leads the node to votes that conflict with ones it
signed, and the record must refuse them. What the process signed is checked from outside the record:
every block of every chain database the test saw (rolled-back branches included) is read with the
node's own code, its proposal signature and the attestations it carries, and the whole set goes
through the slashing detector; the blocks seen over JSON-RPC while it ran must all be among them.

What a rollback can make conflict: a proposal never (the node proposes only the slot under way, later
than any it signed before it was killed); a vote whenever the restored chain's justified checkpoint is
older than a source the key voted from, as every vote that chain leads to then surrounds a signed one
(or is a double vote): the rollbacks restore such a copy and the run lasts past its attestation slot,
so the record must refuse. A lone validator holds all the stake, so such a chain never justifies
again; the restart after each rollback puts back the database the rollback replaced, as an operator
would, and the chain must finalize after the last restart."""

from __future__ import annotations

import random
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from e2e.signed_messages import SignedMessages, signer, vote_source_epoch
from e2e.test_pos_validator import (  # noqa: F401 (nodes: the fixture that kills what is left running)
    PASSWORD,
    SLOT_TIME,
    SLOTS_PER_EPOCH,
    Node,
    _genesis,
    _validator,
    nodes,
)

from ogpu_node.config import load_genesis
from ogpu_node.consensus.slashings import SlashingDetector, signed_proposal
from ogpu_node.crypto.keys import Keypair
from ogpu_node.crypto.keystore import load_private_key
from ogpu_node.node.slashing_protection import protection_path, read_protection
from ogpu_node.types.signing import BlockProposal

SEED = 2026
KILLS = 20
# Restarts 2, 6, 10, 14 and 18 begin on a rolled-back chain; 3, 7, 11, 15 and 19 on the database it replaced.
ROLLBACK_EVERY, ROLLBACK_AT = 4, 2
# Where in a slot a kill lands, as fractions of the slot: the proposal is built and signed at its start,
# the attestation a third in.
PHASES = {"propose": (0.0, 0.1), "attest": (0.28, 0.40), "between": (0.40, 1.0)}
POLL_S = 0.25
VALIDATING_FROM = re.compile(r"validating as 0x[0-9a-f]{40} from slot (\d+)")
REFUSAL = re.compile(r"slashing protection: (proposal|attestation) not signed: (.*)$", re.M)


class Run:
    """One node process seen from outside: the blocks it served over JSON-RPC, until it is killed."""

    def __init__(self, node: Node, genesis_time: int, served: dict[bytes, bytes]) -> None:
        self.node, self.genesis_time, self.served = node, genesis_time, served
        self.next_number = max(1, int(node.rpc("eth_blockNumber"), 16))  # genesis is signed by no one
        deadline = time.monotonic() + 60
        while not (found := VALIDATING_FROM.search(node.err_path.read_text(errors="replace"))):
            assert time.monotonic() < deadline and node.process.poll() is None, node.err_path.read_text()
            time.sleep(0.05)
        self.first_slot = int(found.group(1))

    def slot_start(self, slot: int) -> float:
        return self.genesis_time + slot * SLOT_TIME

    def poll(self) -> None:
        """Take the blocks made since the last poll: hash -> extraData."""
        assert self.node.process.poll() is None, self.node.err_path.read_text()
        latest = int(self.node.rpc("eth_blockNumber"), 16)
        for number in range(self.next_number, latest + 1):
            block = self.node.rpc("eth_getBlockByNumber", hex(number), False)
            self.served[bytes.fromhex(block["hash"][2:])] = bytes.fromhex(block["extraData"][2:])
        self.next_number = latest + 1

    def until(self, moment: float) -> None:
        while time.time() < moment - POLL_S:
            self.poll()
            time.sleep(min(POLL_S, max(0.0, moment - POLL_S - time.time())))
        time.sleep(max(0.0, moment - time.time()))

    def until_true(self, what: str, done, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"{what} within {timeout} s; node log:\n{self.node.err_path.read_text()[-3000:]}")
            self.poll()
            time.sleep(POLL_S)

    def next_attestation_slot(self, address: bytes) -> int:
        """The first attestation slot of this validator from the node's first validating slot on."""
        while True:
            duties = self.node.rpc("ogpu_duties", "0x" + address.hex())
            slot = int(duties["attestationSlot"], 16)
            if slot >= self.first_slot:
                return slot
            self.until(self.slot_start((int(duties["epoch"], 16) + 1) * SLOTS_PER_EPOCH) + 0.05)

    def kill(self) -> None:
        self.node.process.send_signal(signal.SIGKILL)
        self.node.process.wait(timeout=30)


def _restore(copy: Path, chaindata: Path) -> None:
    shutil.rmtree(chaindata)
    shutil.copytree(copy, chaindata)


@pytest.mark.timeout(300)
def test_a_validator_killed_and_restarted_20_times_signs_nothing_slashable(tmp_path, nodes):  # noqa: F811 (the imported fixture)
    began = time.monotonic()
    rng = random.Random(SEED)
    keystore, password_file, address, tip = _validator(tmp_path)
    genesis_time = int(time.time()) + 4  # about when the first node is up
    genesis_path = _genesis(tmp_path / "genesis.json", address, tip, genesis_time)
    genesis = load_genesis(genesis_path)
    datadir = tmp_path / "data"
    chaindata = datadir / "chaindata"
    flags = ("--datadir", datadir, "--genesis", genesis_path, "--keystore", keystore, "--password-file", password_file)
    phases = [*PHASES] * (KILLS // len(PHASES) + 1)
    rng.shuffle(phases)

    copies: list[Path] = []  # the chain database as each kill left it
    vote_source: dict[Path, int] = {}  # of each copy considered for a rollback
    served: dict[bytes, bytes] = {}
    started: list[Node] = []
    rolled_back: list[int] = []  # the runs that began on a rolled-back chain
    kinds: list[str] = []

    def start() -> Run:
        started.append(nodes(*flags))
        return Run(started[-1], genesis_time, served)

    run = start()
    for kill in range(1, KILLS + 1):
        index = len(started) - 1
        if index == 1:
            # Run long enough to finalize past the first copy's vote source: a finalized epoch was the
            # source of a vote, so the record then holds a source above any the copy leads to.
            vote_source[copies[0]] = vote_source_epoch(copies[0], genesis)
            run.until_true("finalization", lambda r=run, floor=vote_source[copies[0]]:
                           int(r.node.rpc("ogpu_finality")["finalized"]["epoch"], 16) > floor)
            base = int((time.time() - genesis_time) // SLOT_TIME) + 1
        elif index in rolled_back:
            base = run.next_attestation_slot(address) + 1  # killed after the vote the record must refuse
        else:
            base = run.first_slot + rng.randint(0, 1)
        low, high = PHASES[phases[kill - 1]]
        kinds.append(phases[kill - 1])
        run.until(run.slot_start(base) + rng.uniform(low, high) * SLOT_TIME)
        run.kill()
        copies.append(tmp_path / "copies" / f"kill{kill}")
        shutil.copytree(chaindata, copies[-1])

        if kill % ROLLBACK_EVERY == ROLLBACK_AT:
            # A copy whose chain leads to votes from a source below one the record signed (read from the
            # record: this only chooses the rollback; what was signed is checked from outside at the end).
            _, _, history = read_protection(protection_path(datadir, address))
            highest_source = max([history.source_floor, *(s for s, _ in history.attestations.values())])
            for copy in copies[:-1]:
                if copy not in vote_source:
                    vote_source[copy] = vote_source_epoch(copy, genesis)
            older = [c for c in copies[:-1] if vote_source[c] < highest_source]
            assert older, f"no copy leads to votes from below epoch {highest_source}: {vote_source}"
            _restore(rng.choice(older), chaindata)
            rolled_back.append(len(started))
        elif kill % ROLLBACK_EVERY == ROLLBACK_AT + 1:
            _restore(copies[-2], chaindata)  # the database the rollback replaced
        run = start()

    # After the last restart the chain finalizes on.
    finalized_at_start = run.node.finalized_number()
    run.until_true("finalization after the last restart", lambda: run.node.finalized_number() > finalized_at_start)
    run.kill()

    # The record refused a vote in every run on a rolled-back chain, and nothing in any other run.
    refusals = [REFUSAL.findall(node.err_path.read_text(errors="replace")) for node in started]
    for index, found in enumerate(refusals):
        if index in rolled_back:
            assert found, f"run {index} on a rolled-back chain refused nothing:\n{started[index].err_path.read_text()}"
        else:
            assert not found, f"run {index} on its own chain refused {found}"
    for node in started:
        assert "Traceback" not in node.err_path.read_text(errors="replace")

    # Everything signed that left the process: each database's blocks, rolled-back branches included.
    messages = SignedMessages()
    for chain_database in [*copies, chaindata]:
        messages.read(chain_database, genesis)
    missing = [h.hex() for h, extra in served.items() if messages.extra_data.get(h) != extra]
    assert served and not missing, f"blocks served over JSON-RPC that no chain database read holds: {missing}"
    assert len(messages.proposals) > max(messages.heads)  # blocks of more than one branch
    assert len(messages.attestations) >= 2

    detector = SlashingDetector()
    evidence = []
    for proposal in sorted(messages.proposals.values(), key=lambda p: p.message.slot):
        assert signer(proposal, genesis.chain_id, messages.genesis_hash) == address
        evidence.append(detector.on_proposal(address, proposal))
    for attestation in sorted(messages.attestations.values(), key=lambda a: a.message.target_epoch):
        assert signer(attestation, genesis.chain_id, messages.genesis_hash) == address
        evidence.append(detector.on_attestation(address, attestation))
    assert [e for e in evidence if e is not None] == []

    # The detector sees a double proposal among these messages when there is one: a second block signed
    # by the same key for a slot it proposed.
    key = Keypair.from_private_key(load_private_key(keystore, address, PASSWORD))
    slot = next(iter(messages.proposals.values())).message.slot
    other = BlockProposal(slot, b"\x01" * 32)
    forged = signed_proposal(slot, other.block_hash, key.sign_hash(other.signing_root(genesis.chain_id,
                                                                                     messages.genesis_hash)))
    assert detector.on_proposal(address, forged) is not None

    refused = [reason for found in refusals for _, reason in found]
    print(f"\n{KILLS} kills ({', '.join(f'{k}: {kinds.count(k)}' for k in PHASES)}), runs on rolled-back "
          f"chains: {rolled_back}, refusals: {len(refused)} ({sum('surround' in r for r in refused)} surround, "
          f"{sum('double vote' in r for r in refused)} double vote), proposals read: {len(messages.proposals)}, "
          f"attestations read: {len(messages.attestations)}, heads: {messages.heads}, "
          f"{time.monotonic() - began:.0f} s")
