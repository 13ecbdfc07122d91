"""net_listening, net_peerCount, eth_syncing, admin_peers and admin_nodeInfo (ogpu_node/rpc/net.py):
the JSON geth answers, built from what the network view says; admin_* only to this machine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio_websocket as tws

from ogpu_node import CLIENT_VERSION
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.node import Node, NodeConfig
from ogpu_node.rpc.jsonrpc import METHOD_NOT_FOUND, JsonRpcProcessor
from ogpu_node.rpc.net import NetApi, NetworkView, NodeInfo, NoNetwork, PeerInfo, SyncProgress

CHAIN_ID = 4242
HEAD = bytes.fromhex("aa" * 32)
GENESIS = bytes.fromhex("11" * 32)
PEER_A = PeerInfo(
    peer_id="16Uiu2HAmA", name="ogpu-node/v0.1.0/python3.11", local_addr="/ip4/127.0.0.1/tcp/30303",
    remote_addr="/ip4/127.0.0.1/tcp/51000", direction="inbound", head_number=17, head_hash=bytes.fromhex("bb" * 32),
    finalized_epoch=2, score=0.5,
)
PEER_B = PeerInfo(
    peer_id="16Uiu2HAmB", name="", local_addr="/ip4/127.0.0.1/tcp/52000",
    remote_addr="/ip4/127.0.0.1/tcp/30304", direction="outbound", head_number=16, head_hash=bytes.fromhex("cc" * 32),
    finalized_epoch=1, score=-3.0,
)
INFO = NodeInfo(
    peer_id="16Uiu2HAmSelf", enr="/ip4/127.0.0.1/tcp/30303/p2p/16Uiu2HAmSelf",
    listen_addrs=("/ip4/127.0.0.1/tcp/30303", "/ip6/::1/tcp/30303"), p2p_port=30303,
    head_hash=HEAD, genesis_hash=GENESIS,
)


@dataclass
class StaticNetwork:
    """A network view holding fixed values: what a running p2p host would report at one moment."""

    is_listening: bool = True
    connected: list[PeerInfo] = field(default_factory=list)
    info: NodeInfo = INFO
    progress: SyncProgress | None = None

    def listening(self) -> bool:
        return self.is_listening

    def peer_count(self) -> int:
        return len(self.connected)

    def peers(self) -> list[PeerInfo]:
        return list(self.connected)

    def node_info(self) -> NodeInfo:
        return self.info

    def syncing(self) -> SyncProgress | None:
        return self.progress


@dataclass(frozen=True)
class Caller:
    """A connection's addresses, as rpc/session.py gives them to methods."""

    listen_hosts: tuple[str, ...]
    remote_host: str | None


LOCAL = Caller(("127.0.0.1",), "127.0.0.1")


def processor(view: NetworkView) -> JsonRpcProcessor:
    return JsonRpcProcessor(NetApi(view, CHAIN_ID).methods())


async def ask(rpc: JsonRpcProcessor, method: str, ctx: Any = LOCAL) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": []}).encode()
    reply = await rpc.handle(body, ctx)
    assert reply is not None
    return json.loads(reply)


async def test_net_listening_and_peer_count_are_the_views():
    rpc = processor(StaticNetwork(is_listening=True, connected=[PEER_A, PEER_B]))
    assert (await ask(rpc, "net_listening"))["result"] is True
    assert (await ask(rpc, "net_peerCount"))["result"] == "0x2"
    quiet = processor(StaticNetwork(is_listening=False))
    assert (await ask(quiet, "net_listening"))["result"] is False
    assert (await ask(quiet, "net_peerCount"))["result"] == "0x0"


async def test_eth_syncing_is_false_when_not_syncing():
    assert (await ask(processor(StaticNetwork(progress=None)), "eth_syncing"))["result"] is False


async def test_eth_syncing_reports_progress_in_hex_as_geth():
    rpc = processor(StaticNetwork(progress=SyncProgress(starting=3, current=100, highest=4096)))
    assert (await ask(rpc, "eth_syncing"))["result"] == {
        "startingBlock": "0x3", "currentBlock": "0x64", "highestBlock": "0x1000",
    }


async def test_admin_peers_lists_each_peer_with_its_status_and_score():
    rpc = processor(StaticNetwork(connected=[PEER_A, PEER_B]))
    assert (await ask(rpc, "admin_peers"))["result"] == [
        {
            "id": "16Uiu2HAmA",
            "name": "ogpu-node/v0.1.0/python3.11",
            "network": {
                "localAddress": "/ip4/127.0.0.1/tcp/30303",
                "remoteAddress": "/ip4/127.0.0.1/tcp/51000",
                "inbound": True,
            },
            "protocols": {"ogpu": {"head": "0x" + "bb" * 32, "number": 17, "finalizedEpoch": 2, "score": 0.5}},
        },
        {
            "id": "16Uiu2HAmB",
            "name": "",
            "network": {
                "localAddress": "/ip4/127.0.0.1/tcp/52000",
                "remoteAddress": "/ip4/127.0.0.1/tcp/30304",
                "inbound": False,
            },
            "protocols": {"ogpu": {"head": "0x" + "cc" * 32, "number": 16, "finalizedEpoch": 1, "score": -3.0}},
        },
    ]


async def test_admin_node_info_names_our_identity_addresses_and_chain():
    assert (await ask(processor(StaticNetwork()), "admin_nodeInfo"))["result"] == {
        "id": "16Uiu2HAmSelf",
        "name": CLIENT_VERSION,
        "enode": "/ip4/127.0.0.1/tcp/30303/p2p/16Uiu2HAmSelf",
        "listenAddr": "/ip4/127.0.0.1/tcp/30303",
        "ports": {"listener": 30303},
        "protocols": {"ogpu": {"network": CHAIN_ID, "genesis": "0x" + "11" * 32, "head": "0x" + "aa" * 32}},
    }


@pytest.mark.parametrize("ctx", [
    Caller(("0.0.0.0",), "127.0.0.1"),  # the server listens on every interface
    Caller(("127.0.0.1", "0.0.0.0"), "127.0.0.1"),  # one of its listeners is not loopback
    Caller(("127.0.0.1",), "192.0.2.7"),  # a client elsewhere (through a forwarded port)
    Caller(("::",), "::1"),
    Caller(("127.0.0.1",), None),  # the client's address is unknown
    Caller((), "127.0.0.1"),  # the server's addresses are unknown
    None,  # a context that carries no addresses at all
], ids=["any-interface", "mixed-listeners", "remote-client", "ipv6-any", "no-client", "no-listener", "no-ctx"])
@pytest.mark.parametrize("method", ["admin_peers", "admin_nodeInfo"])
async def test_rule_admin_is_refused_unless_server_and_client_are_loopback(ctx, method):
    rpc = processor(StaticNetwork(connected=[PEER_A]))
    reply = await ask(rpc, method, ctx)
    assert "result" not in reply
    assert reply["error"]["code"] == METHOD_NOT_FOUND
    assert reply["error"]["message"] == (
        f"the method {method} does not exist/is not available: admin_* is served only to connections "
        "from this machine, to a server listening on a loopback address"
    )
    # The other methods tell nothing private: served to anyone.
    assert (await ask(rpc, "net_peerCount", ctx))["result"] == "0x1"


@pytest.mark.parametrize("ctx", [
    Caller(("127.0.0.1",), "127.0.0.1"),
    Caller(("127.0.0.1", "::1"), "127.0.0.5"),  # "localhost": both loopbacks, all of 127/8 is loopback
    Caller(("::1",), "::1"),
    Caller(("127.0.0.1",), "::ffff:127.0.0.1"),  # IPv4 seen through a dual-stack socket
])
async def test_admin_is_served_to_loopback_clients_of_a_loopback_server(ctx):
    rpc = processor(StaticNetwork(connected=[PEER_B]))
    assert [peer["id"] for peer in (await ask(rpc, "admin_peers", ctx))["result"]] == ["16Uiu2HAmB"]
    assert (await ask(rpc, "admin_nodeInfo", ctx))["result"]["id"] == "16Uiu2HAmSelf"


def test_a_peer_direction_is_inbound_or_outbound():
    with pytest.raises(ValueError, match="'inbound' or 'outbound', not 'sideways'"):
        PeerInfo("p", "", "/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2", "sideways", 0, HEAD, 0, 0.0)  # type: ignore[arg-type]


async def test_no_network_listens_nowhere_has_no_peers_and_never_syncs(chain):
    """--dev: no p2p, so net_listening is false (geth --dev says true; net.py says why we differ)."""
    rpc = JsonRpcProcessor(NetApi(NoNetwork(chain), chain.chain_id).methods())
    assert (await ask(rpc, "net_listening"))["result"] is False
    assert (await ask(rpc, "net_peerCount"))["result"] == "0x0"
    assert (await ask(rpc, "eth_syncing"))["result"] is False
    assert (await ask(rpc, "admin_peers"))["result"] == []
    assert (await ask(rpc, "admin_nodeInfo"))["result"] == {
        "id": "",
        "name": CLIENT_VERSION,
        "enode": "",
        "listenAddr": "",
        "ports": {"listener": 0},
        "protocols": {
            "ogpu": {"network": 1337, "genesis": "0x" + chain.genesis_hash.hex(), "head": "0x" + chain.head.hash.hex()}
        },
    }


async def _http(port: int, method: str) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).encode()
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head + body)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest.mark.timeout(60)
async def test_a_dev_node_serves_them_over_http_and_websocket_on_loopback(tmp_path):
    """The node wires NetApi over NoNetwork in --dev, and its servers on 127.0.0.1 tell methods that the
    client is on this machine: admin_nodeInfo is served over both transports."""
    config = NodeConfig(
        datadir=tmp_path / "node", genesis=load_genesis(DEV_GENESIS), signer=derive_dev_accounts(1)[0],
        http_port=0, ws_port=0, durable=False,
    )
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(config).run)
        assert node.http_port is not None and node.ws_port is not None
        assert (await _http(node.http_port, "net_listening"))["result"] is False
        assert (await _http(node.http_port, "net_peerCount"))["result"] == "0x0"
        assert (await _http(node.http_port, "eth_syncing"))["result"] is False
        genesis = "0x" + node.chain.genesis_hash.hex()
        info = (await _http(node.http_port, "admin_nodeInfo"))["result"]
        assert info["protocols"]["ogpu"] == {"network": 1337, "genesis": genesis, "head": genesis}
        async with tws.open_websocket_url(f"ws://127.0.0.1:{node.ws_port}") as ws:
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "admin_peers", "params": []}))
            assert json.loads(await ws.get_message()) == {"jsonrpc": "2.0", "id": 2, "result": []}
        nursery.cancel_scope.cancel()
