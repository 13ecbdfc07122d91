"""The block tree and its canonical chain: persistence of blocks, receipts and indexes, head switches."""

from ogpu_node.chain.blocks import StoredBlock, system_tx_hash
from ogpu_node.chain.chain import Chain
from ogpu_node.chain.head import ChainError, FinalizedRevert, HeadChange
from ogpu_node.chain.logs import LogFilter

__all__ = ["Chain", "ChainError", "FinalizedRevert", "HeadChange", "LogFilter", "StoredBlock", "system_tx_hash"]
