"""The provider app (`ogpu-node provider run`): bids on batch tasks, trains them, serves on councils.
It talks to its node over JSON-RPC and the blob HTTP endpoint only (docs/tasks.md, "Provider").

- `app`: `Provider`, the trio service (`await provider.run()`), and `ProviderConfig`;
- `core`: the sans-IO decision core, chain events and reports in, actions out (`messages`);
- `executor`, `council`: the executor's training, commits and reveals; one council seat;
- `context`, `store`, `retry`, `concurrency`: task documents, datadir files, the retry rule, threads
  and cancel scopes; `strategy`: whether and what to bid; `chain`: the node, as typed records.
"""

from ogpu_node.apps.provider.app import Provider, ProviderConfig
from ogpu_node.apps.provider.core import ProviderCore
from ogpu_node.apps.provider.strategy import BidStrategy, Job, Resources, infeasible

__all__ = ["BidStrategy", "Job", "Provider", "ProviderConfig", "ProviderCore", "Resources", "infeasible"]
