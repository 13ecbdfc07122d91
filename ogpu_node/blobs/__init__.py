"""Content-addressed store for datasets, models and checkpoints (synchronous; see DESIGN.md §1, §6)."""

from ogpu_node.blobs.keeper import BlobKeeper, block_references, chain_standing
from ogpu_node.blobs.ledger import BlobLedger, LedgerFull, charge_of
from ogpu_node.blobs.store import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MIN_FREE_BYTES,
    BlobError,
    BlobHashMismatch,
    BlobNotFound,
    BlobStore,
    BlobStoreFull,
    BlobTooLarge,
    BlobWriter,
    parse_hash,
)
from ogpu_node.blobs.uploads import UploadGate, UploadLimits, UploadRefused
from ogpu_node.types.merkle import CHUNK_SIZE, EMPTY_ROOT, MerkleHasher, merkle_root

__all__ = [
    "CHUNK_SIZE",
    "BlobKeeper",
    "BlobLedger",
    "LedgerFull",
    "UploadGate",
    "UploadLimits",
    "UploadRefused",
    "block_references",
    "chain_standing",
    "charge_of",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MIN_FREE_BYTES",
    "EMPTY_ROOT",
    "BlobError",
    "BlobHashMismatch",
    "BlobNotFound",
    "BlobStore",
    "BlobStoreFull",
    "BlobTooLarge",
    "BlobWriter",
    "MerkleHasher",
    "merkle_root",
    "parse_hash",
]
