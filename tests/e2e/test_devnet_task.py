"""A batch task end to end across a 4-validator devnet (issue 13, "must show"): the client submits on
node 0, the four providers are attached to nodes 1, 2, 3 and 1, so the prescription, the dataset and
every checkpoint travel between nodes (blobs_by_hash); every checkpoint is accepted and paid exactly as
on a single node (tests/e2e/test_provider_e2e.py does the same on one --dev node)."""

from __future__ import annotations

import pytest
import requests
from e2e.cli_run import cli
from e2e.test_cli_devnet import Devnet, devnets  # noqa: F401 (the fixture that stops the devnet)
from e2e.test_provider_e2e import (
    MIN_PROVIDER_STAKE,
    K,
    ProviderProcess,
    chain_views,
    gas_paid,
    honest_payments,
    make_dataset,
    sized_prescription,
    start_provider,
    stop_providers,
    submit,
    task_events,
    wait_for,
)
from web3 import Web3

from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.types.protocol import TaskState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROVIDER_NODES = (1, 2, 3, 1)  # provider i+1 (dev account i+1) attaches to this node; the client is on node 0


class _Node:
    def __init__(self, url: str) -> None:
        self.http_url = url


@pytest.fixture
def providers():
    started: list[ProviderProcess] = []
    yield started
    stop_providers(started)


def test_a_batch_task_across_the_devnet_is_accepted_and_paid(tmp_path, devnets, providers):  # noqa: F811
    devnet: Devnet = devnets("--validators", "4", "--slot-time", "1", "--base-port", "0", "--datadir", tmp_path / "d")
    urls = [http for http, _, _ in devnet.nodes]
    w3 = Web3(Web3.HTTPProvider(urls[0], request_kwargs={"timeout": 30}))
    accounts = derive_dev_accounts(6)

    data = make_dataset(tmp_path / "data.safetensors")
    prescription_path, p = sized_prescription(tmp_path, data)
    first_block = w3.eth.block_number + 1
    for index, node in enumerate(PROVIDER_NODES, start=1):
        cost = 10**14 if index == 1 else 10**15  # provider 1 (on node 1) is the cheapest: the executor
        providers.append(start_provider(urls[node], accounts[index].private_key, tmp_path / f"provider{index}",
                                        "--cost-per-second", str(cost)))
    wait_for("four registered providers", lambda: all("watching tasks" in pr.log() for pr in providers), 240,
             providers)
    client = Web3.to_checksum_address(accounts[5].address)
    addresses = [pr.address for pr in providers]
    before = {a: w3.eth.get_balance(a, first_block - 1) for a in [*addresses, client]}
    task_id = submit(tmp_path, _Node(urls[0]), accounts, data, prescription_path)

    chain = chain_views(urls[0])
    state = lambda: TaskState(chain.task_record(task_id).state).label  # noqa: E731
    wait_for("the task to be decided", lambda: state() in ("AwaitingConfirmation", "Cancelled"), 600, providers)
    events = task_events(urls[0], task_id)
    assert state() == "AwaitingConfirmation", [(e.name, e.args) for e in events]
    names = [e.name for e in events]
    assert names.count("CheckpointAccepted") == K and "CheckpointRejected" not in names

    # The blobs travelled: each member's node fetched the checkpoints the executor's node took.
    record = chain.task_record(task_id)
    executor = record.executor
    assert executor == providers[0].address
    for k in range(1, K + 1):
        checkpoint = "0x" + bytes(chain.checkpoint(task_id, k).checkpoint_hash).hex()
        for url in {urls[n] for n in PROVIDER_NODES}:
            response = requests.head(f"{url}/blobs/{checkpoint}", timeout=30)
            assert response.status_code == 200, (url, k)

    # The client confirms (on node 0); the escrow left returns: paid exactly as on one node, on every
    # node's view of the chain.
    confirmed = cli("task", "confirm", str(task_id), "--rpc-url", urls[0], "--private-key",
                    "0x" + accounts[5].private_key.hex())
    assert confirmed.returncode == 0, confirmed.stderr
    assert state() == "Settled"
    for a in addresses:
        assert chain.stake_of(a).staked == MIN_PROVIDER_STAKE
    expected = honest_payments(record.price, executor, addresses, client)
    head = w3.eth.block_number
    for url in urls:
        view = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
        wait_for(f"{url} at block {head}", lambda v=view: v.eth.block_number >= head, 60)
        changes = {a: view.eth.get_balance(a, head) - before[a] + gas_paid(view, a, first_block, head) for a in before}
        assert changes == expected, url

