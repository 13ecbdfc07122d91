"""Apps that talk to a node over JSON-RPC and blob HTTP only (DESIGN.md §1): the client app."""

from ogpu_node.apps.client import Client, ClientError, TaskStatus

__all__ = ["Client", "ClientError", "TaskStatus"]
