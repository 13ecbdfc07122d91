"""Numeric profiles on chain (docs/protocol.md, "Stake" and "Stream tasks"): providers register the
profiles they can compute under with Stake.setProfiles (ids = keccak(name)); a stream whose terms name
a numericProfile takes only subscribers that registered it, and a batch task's councils are drawn only
from them. A zero numericProfile takes any provider. In-process, on blocks built by harness.py."""

from __future__ import annotations

from typing import Any

import pytest
from eth_hash.auto import keccak
from harness import BID_ABI, OGPU, STAKE_ABI, TASK_ABI, Event, Harness
from test_task_checkpoints import MAX_PAYMENT, PRESCRIPTION, Scenario, ckpt, named, terms

from ogpu_node.types.protocol import BPS, MAX_PROFILES, NO_PROFILE, CancelReason, TaskState, profile_id

CPU = profile_id("cpu-avx2-1t")
CUDA = profile_id("cuda-sm90-tf32-off")
ROCM = profile_id("rocm-gfx942")
NOT_REGISTERED = "Bid: provider has not registered the task's numeric profile"
STREAM_TERMS = {
    "budget": 10 * OGPU, "councilSize": 1, "pricePerUnit": 10**12, "responseMethod": 0, "responseWeight": 0,
    "maxResponseTime": 5, "settleWindow": 100, "minMemoryMiB": 0, "deviceMask": 0,
}


@pytest.fixture
def h(chain) -> Harness:
    return Harness(chain)


def profiles_of(h: Harness, account: Any) -> list[bytes]:
    return h.view(STAKE_ABI, "profilesOf", account.address)


def test_profile_ids_are_the_keccak_of_the_name():
    assert CPU == keccak(b"cpu-avx2-1t") and NO_PROFILE == b"\x00" * 32


# -- Stake.setProfiles --


def test_set_profiles_registers_in_order_and_replaces_the_earlier_list(h, dev_accounts):
    p = dev_accounts[1]
    assert profiles_of(h, p) == []
    result = h.ok(p, STAKE_ABI, "setProfiles", [CUDA, CPU])
    assert result.events == [Event("Stake", "ProfilesSet", {"account": p.address, "profiles": [CUDA, CPU]})]
    assert profiles_of(h, p) == [CUDA, CPU]
    h.ok(p, STAKE_ABI, "setProfiles", [ROCM])
    assert profiles_of(h, p) == [ROCM]
    h.ok(p, STAKE_ABI, "setProfiles", [])
    assert profiles_of(h, p) == []
    assert profiles_of(h, dev_accounts[2]) == []  # per account


def test_set_profiles_accepts_the_maximum(h, dev_accounts):
    many = [profile_id(f"profile-{i}") for i in range(MAX_PROFILES)]
    h.ok(dev_accounts[1], STAKE_ABI, "setProfiles", many)
    assert profiles_of(h, dev_accounts[1]) == many


@pytest.mark.parametrize(
    ("profiles", "reason"),
    [
        ([profile_id(f"profile-{i}") for i in range(MAX_PROFILES + 1)], f"Stake.setProfiles: more than {MAX_PROFILES} profiles"),
        ([CPU, NO_PROFILE], "Stake.setProfiles: a profile id is zero"),
        ([CPU, CUDA, CPU], "Stake.setProfiles: a profile is listed twice"),
    ],
    ids=["too-many", "zero", "twice"],
)
def test_set_profiles_rejections_keep_the_earlier_list(h, dev_accounts, profiles, reason):
    p = dev_accounts[1]
    h.ok(p, STAKE_ABI, "setProfiles", [ROCM])
    result = h.send(p, STAKE_ABI, "setProfiles", profiles)
    assert (result.ok, result.reason, result.events) == (False, reason, [])
    assert profiles_of(h, p) == [ROCM]


# -- streams: Bid.subscribe --


def new_stream(h: Harness, chain: Any, client: Any, profile: bytes) -> int:
    t = {**STREAM_TERMS, "numericProfile": profile}
    deposit = t["budget"] * chain.genesis.protocol.client_deposit_bps // BPS
    result = h.ok(client, TASK_ABI, "submitStream", keccak(b"stream"), t, value=t["budget"] + deposit)
    return TASK_ABI.decode_output("submitStream", result.output)


def test_a_stream_naming_a_profile_takes_only_providers_that_registered_it(h, chain, dev_accounts):
    client, cpu, cuda, none, switched = dev_accounts[:5]
    h.make_providers([cpu, cuda, none, switched], 200 * OGPU)
    block = h.block(
        h.tx(cpu, STAKE_ABI, "setProfiles", [CUDA, CPU]),
        h.tx(cuda, STAKE_ABI, "setProfiles", [CUDA]),
        h.tx(switched, STAKE_ABI, "setProfiles", [CPU]),
    )
    assert all(r.ok for r in block.txs)
    h.ok(switched, STAKE_ABI, "setProfiles", [ROCM])  # CPU no longer registered
    task = new_stream(h, chain, client, CPU)
    assert h.view(TASK_ABI, "getStream", task)["subscribers"] == 0
    block = h.block(*(h.tx(p, BID_ABI, "subscribe", task) for p in (cpu, cuda, none, switched)))
    assert [r.reason for r in block.txs] == [None, NOT_REGISTERED, NOT_REGISTERED, NOT_REGISTERED]
    assert h.view(BID_ABI, "subscribersOf", task) == [cpu.address]
    assert [h.view(STAKE_ABI, "stakeOf", p.address)["locked"] for p in (cpu, cuda, none, switched)] == [
        chain.genesis.protocol.council_seat_stake, 0, 0, 0]


def test_a_stream_without_a_profile_takes_any_provider(h, chain, dev_accounts):
    client, cpu, none = dev_accounts[:3]
    h.make_providers([cpu, none], 200 * OGPU)
    h.ok(cpu, STAKE_ABI, "setProfiles", [CPU])
    task = new_stream(h, chain, client, NO_PROFILE)
    block = h.block(*(h.tx(p, BID_ABI, "subscribe", task) for p in (cpu, none)))
    assert [r.reason for r in block.txs] == [None, None]


# -- batch councils --


def batch_with_profile(s: Scenario, client: Any, executor: Any, profile: bytes, council_size: int) -> int:
    t = {**terms(councilSize=council_size, checkpoints=1, firstN=1), "numericProfile": profile}
    deposit = MAX_PAYMENT * s.h.chain.genesis.protocol.client_deposit_bps // BPS
    result = s.h.ok(client, TASK_ABI, "submitTask", PRESCRIPTION, 0, t, value=MAX_PAYMENT + deposit)
    task = TASK_ABI.decode_output("submitTask", result.output)
    assert s.h.view(TASK_ABI, "getTerms", task)["numericProfile"] == profile
    s.assign(task, [(executor, OGPU)])
    return task


@pytest.fixture
def cast(chain, dev_accounts) -> tuple[Scenario, list[Any], list[Any]]:
    """Six providers besides the client and the executor: three registered CPU, three did not (two
    registered another profile, one none), all with equal stake."""
    s = Scenario(chain, dev_accounts)
    registered, others = list(dev_accounts[2:5]), list(dev_accounts[5:8])
    s.providers([dev_accounts[1], *registered, *others])
    block = s.h.block(
        *(s.h.tx(p, STAKE_ABI, "setProfiles", [CUDA, CPU]) for p in registered),
        *(s.h.tx(p, STAKE_ABI, "setProfiles", [CUDA]) for p in others[:2]),
    )
    assert all(r.ok for r in block.txs)
    return s, registered, others


def test_a_batch_council_is_drawn_only_from_providers_with_the_profile(cast, dev_accounts):
    s, registered, _ = cast
    client, executor = dev_accounts[0], dev_accounts[1]
    task = batch_with_profile(s, client, executor, CPU, 3)
    s.commit(task, 1, executor, ckpt(1))
    drawn = s.draw(task, 1)
    assert sorted(drawn["members"]) == sorted(p.address for p in registered)


def test_too_few_providers_with_the_profile_cancel_the_task(cast, dev_accounts):
    """c = 4 with three registered providers (and three more that qualify otherwise): cancelled."""
    s, _, _ = cast
    client, executor = dev_accounts[0], dev_accounts[1]
    task = batch_with_profile(s, client, executor, CPU, 4)
    s.commit(task, 1, executor, ckpt(1))
    events = s.h.block().system_events
    assert named(events, "CouncilDrawn") == []
    [cancelled] = named(events, "TaskCancelled")
    assert cancelled["reason"] == CancelReason.TOO_FEW_CANDIDATES
    assert s.task(task)["state"] == TaskState.CANCELLED


def test_a_batch_task_without_a_profile_draws_from_every_provider(cast, dev_accounts):
    s, registered, others = cast
    client, executor = dev_accounts[0], dev_accounts[1]
    task = batch_with_profile(s, client, executor, NO_PROFILE, 6)
    s.commit(task, 1, executor, ckpt(1))
    drawn = s.draw(task, 1)
    assert sorted(drawn["members"]) == sorted(p.address for p in [*registered, *others])
