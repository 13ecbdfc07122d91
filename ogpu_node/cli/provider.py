"""``ogpu-node provider run``: the provider app over JSON-RPC (docs/tasks.md, "Provider").

The app is a trio service; SIGINT and SIGTERM cancel it (its work ends, its worker processes close)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

import click

from ogpu_node.cli.common import (
    datadir_option,
    key_options,
    private_key_from_options,
    resolve_datadir,
    rpc_url_option,
)
from ogpu_node.types.protocol import FAULT_KINDS

__all__ = ["provider"]

# apps.provider.stream_ws.STREAM_FAULTS, spelled here so that the CLI starts without loading the app
STREAM_FAULTS = ("wrong-tokens", "silent")
COUNCIL_FAULTS = ("lazy",)  # apps.provider.council.COUNCIL_FAULTS


@click.group("provider")
def provider() -> None:
    """Serve batch tasks as a staked provider (the provider app)."""


@provider.command("run")
@rpc_url_option
@key_options
@datadir_option
@click.option("--stake", "stake_wei", type=click.IntRange(min=1), default=None,
              help="Stake to hold in wei, topped up at start (default: the chain's provider minimum).")
@click.option("--memory-mib", type=click.IntRange(min=1), default=None,
              help="Memory to offer (default: all of this machine's).")
@click.option("--cost-per-second", type=click.IntRange(min=1), default=10**15, show_default=True,
              help="Operator's cost of one second of compute, in wei; bids are this × estimated seconds × (1 + margin).")
@click.option("--margin", type=click.FloatRange(min=0, max=4), default=0.2, show_default=True,
              help="Initial profit margin; it adapts to the recent win rate.")
@click.option("--fault", type=click.Choice(FAULT_KINDS), default=None,
              help="TESTING ONLY: train dishonestly as executor (councils reject it and the stake is slashed).")
@click.option("--fault-magnitude", type=click.FloatRange(min=0, min_open=True), default=1e-6, show_default=True,
              help="Size of the weight perturbation of --fault perturb.")
@click.option("--ws-url", default=None, envvar="OGPU_WS_URL",
              help="The node's WebSocket endpoint for stream work (default: the --rpc-url host, port 8546).")
@click.option("--streams/--no-streams", default=True, show_default=True,
              help="Subscribe to stream tasks and serve their requests.")
@click.option("--stream-fault", type=click.Choice(STREAM_FAULTS), default=None,
              help="TESTING ONLY: answer stream requests dishonestly (wrong-tokens: altered bytes, signed; "
                   "silent: never answer). A wrong answer is proved by the council and slashed; silence is counted.")
@click.option("--council-fault", type=click.Choice(COUNCIL_FAULTS), default=None,
              help="TESTING ONLY: sit on councils without computing (lazy: commit and judge at random; under "
                   "allclose the other members find it out and its seat stake is slashed).")
def run(rpc_url: str, keystore: Path | None, from_address: str | None, password_file: Path | None,
        private_key: str | None, datadir: Path | None, stake_wei: int | None, memory_mib: int | None,
        cost_per_second: int, margin: float, fault: str | None, fault_magnitude: float, ws_url: str | None,
        streams: bool, stream_fault: str | None, council_fault: str | None) -> None:
    """Register as a provider at RPC_URL's chain, bid on batch tasks, train them and serve on councils;
    subscribe to stream tasks that pay and serve their requests through the node's WebSocket."""
    key = private_key_from_options(keystore, password_file, from_address, private_key)
    asked: list[int] = []  # signals received before the app existed: it never starts
    apps: list[Any] = []  # the Provider, once built

    def stop(signum: int, _frame: FrameType | None) -> None:
        asked.append(signum)
        for app in apps:
            app.stop()  # signal-safe: it only schedules the cancellation on the trio loop

    # Installed first (building the app loads the compute layer, which takes a while) and before
    # trio.run, so trio keeps them instead of raising KeyboardInterrupt.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    import trio

    from ogpu_node.apps.client import ClientError
    from ogpu_node.apps.provider import Provider, ProviderConfig
    from ogpu_node.compute import Fault

    config = ProviderConfig(
        rpc_url=rpc_url, private_key=key, datadir=resolve_datadir(datadir) / "provider", stake=stake_wei,
        memory_mib=memory_mib, cost_per_second=cost_per_second, margin=margin,
        fault=None if fault is None else Fault(fault, magnitude=fault_magnitude),
        streams=streams, ws_url=ws_url, stream_fault=stream_fault, council_fault=council_fault,
    )
    apps.append(Provider(config))
    if asked:
        return
    try:
        trio.run(apps[0].run)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
