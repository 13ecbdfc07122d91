"""JSON-RPC over HTTP and WebSocket: eth_*, net_*, web3_*."""
