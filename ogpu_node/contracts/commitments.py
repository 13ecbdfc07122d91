"""The commitments of the checkpoint protocol: what the executor and council members commit to before
they reveal. Apps compute the same hashes to commit; Task recomputes them to check a reveal."""

from __future__ import annotations

from eth_abi import encode
from eth_hash.auto import keccak


def checkpoint_commitment(task_id: int, k: int, executor: bytes, checkpoint_hash: bytes) -> bytes:
    """The executor's commitment to checkpoint k's hash (bound to the executor: no one can copy it)."""
    return keccak(encode(["uint256", "uint16", "address", "bytes32"], [task_id, k, executor, checkpoint_hash]))


def exact_result_commitment(
    task_id: int, k: int, member: bytes, result_hash: bytes, step_hash: bytes, salt: bytes
) -> bytes:
    """A council member's commitment to its own result and the state hash at the drawn step (both
    equivalences: it is made before the executor reveals)."""
    return keccak(
        encode(["uint256", "uint16", "address", "bytes32", "bytes32", "bytes32"], [task_id, k, member, result_hash, step_hash, salt])
    )

