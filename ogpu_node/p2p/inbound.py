"""The swarm's handling of an inbound connection, without py-libp2p 0.8.1's leak (DESIGN.md §5).

In 0.8.1 the task that accepts an inbound TCP connection never returns: after the upgrade it waits
until the whole swarm stops ("intentional barrier"), so its socket is not closed under the live
connection. That task holds one slot of the swarm's inbound limiter (a CapacityLimiter of
max_connections - min_connections = 250 slots), released only when it returns. So each inbound
connection ever accepted leaks its task and the objects it holds, and once 250 have come and gone the
node refuses every inbound connection, for good: a peer that connects and closes 250 times cuts the
node off from everyone who would dial it. `release_closed_inbound` gives one swarm a handler that waits
for its own connection to close instead, and then returns (releasing the slot and the task).
"""

from __future__ import annotations

import logging
from typing import Any

from libp2p.abc import IMuxedConn
from libp2p.network.connection.raw_connection import RawConnection

log = logging.getLogger("ogpu.p2p")


def release_closed_inbound(swarm: Any) -> None:
    """Replace ``swarm``'s inbound-connection handler (the TCP path; pre-multiplexed transports, which
    the node does not listen on, keep the library's)."""
    library_handler = swarm._do_handle_inbound_connection

    async def handle(read_write_closer: Any, maddr: Any, failure_event: Any) -> None:
        if isinstance(read_write_closer, IMuxedConn):
            await library_handler(read_write_closer, maddr, failure_event)
            return
        remote = swarm._build_remote_multiaddr(read_write_closer)
        if remote is not None and not await swarm.connection_gate.is_allowed(remote):
            await _close(read_write_closer)
            return
        raw = RawConnection(read_write_closer, False)
        try:
            muxed = await swarm.upgrade_inbound_raw_conn(raw, maddr)
        except Exception as exc:  # not Noise, a failed handshake, a limit: the library logged why
            log.debug("inbound connection from %s not upgraded: %r", remote, exc)
            await _close(raw)
            return
        # Returning closes the socket (trio's serve_listeners): only once the connection is over.
        await muxed.event_closed.wait()

    swarm._do_handle_inbound_connection = handle


async def _close(connection: Any) -> None:
    try:
        await connection.close()
    except Exception:
        pass
