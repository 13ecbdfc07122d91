"""Transaction pool: validation at the door, per-sender nonce order, pending vs queued, eviction."""

from ogpu_node.txpool.pool import PoolConfig, TxPool, TxRejected

__all__ = ["PoolConfig", "TxPool", "TxRejected"]
