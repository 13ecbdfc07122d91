"""A validator's signing key and RANDAO hash chain (docs/consensus.md, "Running a validator").

The RANDAO secret is derived from the private key, so the keystore is the one thing to back up:
`secret = keccak(b"ogpu/randao-secret" ‖ private key)`. Knowing the secret tells every future reveal
but not the key; it is never logged.

Building a 2^20-long chain takes 5-15 s on a laptop core, so the node keeps the chain's checkpoints
(every 1024th value) in `<datadir>/validator/randao-<address>.bin` and reads them on restart.
That file lets its reader predict the validator's future reveals: it is written 0600, as the keystore.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ogpu_node.consensus import HashChain, ValidatorKey
from ogpu_node.consensus.randao import CHECKPOINT_EVERY
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.files import atomic_write

log = logging.getLogger("ogpu.validator")

_SECRET_DOMAIN = b"ogpu/randao-secret"
_CACHE_MAGIC = b"ogpu-randao-v1\n"



def randao_secret(private_key: bytes) -> bytes:
    return keccak(_SECRET_DOMAIN + private_key)


def randao_chain(private_key: bytes, length: int) -> HashChain:
    return HashChain(randao_secret(private_key), length)


def _cache_path(datadir: Path, address: bytes) -> Path:
    return datadir / "validator" / f"randao-{address.hex()}.bin"


def _encode(chain: HashChain) -> bytes:
    return _CACHE_MAGIC + chain.length.to_bytes(8, "big") + chain.tip + b"".join(chain.checkpoints())


def _decode(data: bytes, secret: bytes, length: int) -> HashChain | None:
    """The chain the file holds, or None when it is not this secret's chain of this length."""
    header = len(_CACHE_MAGIC) + 8 + 32
    count = length // CHECKPOINT_EVERY + 1
    if len(data) != header + 32 * count or not data.startswith(_CACHE_MAGIC):
        return None
    if int.from_bytes(data[len(_CACHE_MAGIC):len(_CACHE_MAGIC) + 8], "big") != length:
        return None
    tip = data[header - 32:header]
    checkpoints = [data[header + 32 * i:header + 32 * (i + 1)] for i in range(count)]
    # The first value is the secret and the last one hashes to the tip: the file is this chain's.
    # (A value corrupted in between gives a wrong reveal, which the node's own block check refuses.)
    if checkpoints[0] != secret:
        return None
    try:
        return HashChain.from_checkpoints(length, checkpoints, tip)
    except ValueError:
        return None


def load_validator_key(datadir: Path, keypair: Keypair, length: int) -> ValidatorKey:
    """The validator key of ``keypair`` with its RANDAO chain of ``length``, from the datadir's cache when
    it holds this chain; built (and cached) otherwise."""
    secret = randao_secret(keypair.private_key)
    path = _cache_path(datadir, keypair.address)
    chain: HashChain | None = None
    try:
        chain = _decode(path.read_bytes(), secret, length)
    except OSError:
        pass
    if chain is None:
        log.info("building the RANDAO hash chain (%d hashes) for 0x%s", length, keypair.address.hex())
        chain = HashChain(secret, length)
        try:
            atomic_write(path, _encode(chain))
        except OSError as exc:  # the node runs on; the next start builds the chain again
            log.warning("cannot keep the RANDAO hash chain in %s: %s", path, exc.strerror or exc)
    return ValidatorKey(keypair, chain)
