"""The block tree's canonical chain: persistence of blocks, receipts and indexes, one write per block."""

from ogpu_node.chain.chain import Chain, ChainError, StoredBlock
from ogpu_node.chain.logs import LogFilter

__all__ = ["Chain", "ChainError", "LogFilter", "StoredBlock"]
