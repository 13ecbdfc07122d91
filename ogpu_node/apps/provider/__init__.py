"""The provider app (`ogpu-node provider run`): bids on batch tasks, trains them, serves on councils.
It talks to its node over JSON-RPC and the blob HTTP endpoint only (docs/tasks.md, "Provider")."""

from ogpu_node.apps.provider.app import PROFILE, Provider, ProviderConfig
from ogpu_node.apps.provider.strategy import BidStrategy, Job, Resources, infeasible

__all__ = ["PROFILE", "BidStrategy", "Job", "Provider", "ProviderConfig", "Resources", "infeasible"]
