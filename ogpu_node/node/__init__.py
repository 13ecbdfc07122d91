"""Wires chain, pool, block production and RPC into one trio program."""

from ogpu_node.node.node import Node, NodeConfig

__all__ = ["Node", "NodeConfig"]
