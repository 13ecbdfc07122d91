"""EIP-3076's slashing-protection interchange format (version 5), with ogpu's identities: `pubkey` is
the validator's address and `genesis_validators_root` the chain's genesis hash (docs/consensus.md,
"Slashing protection").

Export writes each key's signed proposals and attestations, and its watermarks as one proposal
(`slot` = the block watermark) and one attestation (the source and target watermarks) without a
`signing_root`, which EIP-3076's rules read as refusing everything at or below them. Import reads a
file as watermarks at each key's highest slot, source and target (`SigningHistory.merge`).
Numbers are decimal strings, as the EIP says; anything else is refused with the field's path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ogpu_node.consensus import SigningHistory
from ogpu_node.consensus.protection import NO_FLOOR
from ogpu_node.jsontext import JsonBoundsError, loads_bounded

INTERCHANGE_FORMAT_VERSION = "5"
MAX_INTERCHANGE_BYTES = 16 << 20  # an ogpu-node export holds ~2k records per key, ~300 bytes each
_MAX_NESTING = 6  # the format nests four levels
_DECIMAL = re.compile(r"[0-9]{1,20}")
_UINT64 = 1 << 64


class InterchangeError(ValueError):
    """An interchange file that is not EIP-3076 version 5 as ogpu-node reads it; one line naming the field."""


def to_interchange(genesis_hash: bytes, histories: Mapping[bytes, SigningHistory]) -> dict[str, Any]:
    """The interchange document of ``histories`` (by validator address) on the chain of ``genesis_hash``."""
    data = []
    for address, h in sorted(histories.items()):
        blocks = [{"slot": str(h.block_floor)}] if h.block_floor != NO_FLOOR else []
        blocks += [{"slot": str(slot), "signing_root": "0x" + root.hex()} for slot, root in sorted(h.blocks.items())]
        attestations = ([{"source_epoch": str(max(h.source_floor, 0)), "target_epoch": str(h.target_floor)}]
                        if h.target_floor != NO_FLOOR else [])
        attestations += [{"source_epoch": str(source), "target_epoch": str(target), "signing_root": "0x" + root.hex()}
                         for target, (source, root) in sorted(h.attestations.items())]
        data.append({"pubkey": "0x" + address.hex(), "signed_blocks": blocks, "signed_attestations": attestations})
    return {"metadata": {"interchange_format_version": INTERCHANGE_FORMAT_VERSION,
                         "genesis_validators_root": "0x" + genesis_hash.hex()},
            "data": data}


def _field(obj: Any, name: str, path: str) -> Any:
    if not isinstance(obj, dict):
        raise InterchangeError(f"{path}: not an object")
    if name not in obj:
        raise InterchangeError(f"{path}.{name}: missing")
    return obj[name]


def _hex(value: Any, size: int, path: str) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(rf"0x[0-9a-fA-F]{{{2 * size}}}", value):
        raise InterchangeError(f"{path}: not 0x and {2 * size} hex digits")
    return bytes.fromhex(value[2:])


def _number(value: Any, path: str) -> int:
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value) or int(value) >= _UINT64:
        raise InterchangeError(f"{path}: not a uint64 as a decimal string")
    return int(value)


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise InterchangeError(f"{path}: not a list")
    return value


def from_interchange(text: bytes) -> tuple[bytes, dict[bytes, SigningHistory]]:
    """(genesis hash, watermarks by validator address) of an interchange file; InterchangeError, for
    the first field that is wrong, on anything else."""
    try:
        doc = loads_bounded(text, max_bytes=MAX_INTERCHANGE_BYTES, max_nesting=_MAX_NESTING)
    except JsonBoundsError as exc:
        raise InterchangeError(f"not an interchange file: {exc}") from None
    metadata = _field(doc, "metadata", "$")
    version = _field(metadata, "interchange_format_version", "metadata")
    if version != INTERCHANGE_FORMAT_VERSION:
        raise InterchangeError(f"metadata.interchange_format_version: {version!r} is not supported "
                               f"(only {INTERCHANGE_FORMAT_VERSION!r})")
    genesis_hash = _hex(_field(metadata, "genesis_validators_root", "metadata"), 32,
                        "metadata.genesis_validators_root")
    histories: dict[bytes, SigningHistory] = {}
    for i, entry in enumerate(_list(_field(doc, "data", "$"), "data")):
        path = f"data[{i}]"
        address = _hex(_field(entry, "pubkey", path), 20, f"{path}.pubkey (a validator address)")
        slots, sources, targets = [NO_FLOOR], [NO_FLOOR], [NO_FLOOR]
        for j, block in enumerate(_list(_field(entry, "signed_blocks", path), f"{path}.signed_blocks")):
            where = f"{path}.signed_blocks[{j}]"
            slots.append(_number(_field(block, "slot", where), f"{where}.slot"))
            if "signing_root" in block:
                _hex(block["signing_root"], 32, f"{where}.signing_root")
        for j, att in enumerate(_list(_field(entry, "signed_attestations", path), f"{path}.signed_attestations")):
            where = f"{path}.signed_attestations[{j}]"
            source = _number(_field(att, "source_epoch", where), f"{where}.source_epoch")
            target = _number(_field(att, "target_epoch", where), f"{where}.target_epoch")
            if source > target:
                raise InterchangeError(f"{where}: source_epoch {source} is after target_epoch {target}")
            if "signing_root" in att:
                _hex(att["signing_root"], 32, f"{where}.signing_root")
            sources.append(source)
            targets.append(target)
        history = histories.setdefault(address, SigningHistory())  # a key listed twice: both count
        history.raise_floors(max(slots), max(sources), max(targets))
    return genesis_hash, histories
