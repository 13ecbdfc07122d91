"""Encrypted key files in geth's keystore format (Web3 Secret Storage v3, scrypt KDF).

Files live in ``<datadir>/keystore`` and are named as geth names them:
``UTC--2024-01-02T03-04-05.123456789Z--<lowercase hex address>``. They are written atomically
(temp file + ``os.replace``) with mode 0o600 in a 0o700 directory.

Nothing here logs, prints or puts a private key into an exception message.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import to_checksum_address

from ogpu_node.crypto.signatures import SECP256K1_N
from ogpu_node.files import atomic_write

__all__ = [
    "LIGHT_SCRYPT_N",
    "SECP256K1_N",
    "KeystoreError",
    "create_account",
    "find_account",
    "keystore_dir",
    "list_accounts",
    "load_private_key",
    "parse_private_key",
    "validate_private_key",
]

# geth's --lightkdf scrypt N (keystore.LightScryptN).
LIGHT_SCRYPT_N = 1 << 12

# A keystore file is well under 1 KiB; anything much larger is not one.
_MAX_KEYFILE_SIZE = 64 * 1024
# It holds four JSON objects (the file, crypto, cipherparams, kdfparams). Capping the brackets caps
# the nesting before json.loads sees the text: py-evm raises the recursion limit to 10^5, and a
# file of 32k nested brackets would overflow the C stack instead of raising (ogpu_node/jsontext.py).
_MAX_KEYFILE_BRACKETS = 64


# Bounds on a key file's KDF cost, checked before decrypting: a file could ask for terabytes of
# scrypt memory or years of PBKDF2. geth writes N = 2^18, r = 8, p = 1 (256 MiB); we allow 4x that.
_MAX_SCRYPT_MEMORY = 1 << 30
_MAX_PBKDF2_ROUNDS = 10_000_000


class KeystoreError(ValueError):
    """A keystore operation failed; ``str(error)`` is one line fit to show a user."""


def _check_kdf_cost(path: Path, data: dict[str, Any]) -> None:
    crypto = data.get("crypto") or data.get("Crypto") or {}
    params = crypto.get("kdfparams") if isinstance(crypto, dict) else None
    if not isinstance(params, dict):
        return  # eth-account reports what is missing
    def number(name: str) -> int:
        value = params.get(name, 1)
        return value if isinstance(value, int) and value > 0 else 1
    if crypto.get("kdf") == "scrypt":
        memory = 128 * number("n") * number("r") * number("p")
        if memory > _MAX_SCRYPT_MEMORY:
            raise KeystoreError(f"keystore: {path} asks scrypt for {memory} bytes of memory, more than "
                                f"the {_MAX_SCRYPT_MEMORY} allowed")
    elif crypto.get("kdf") == "pbkdf2" and number("c") > _MAX_PBKDF2_ROUNDS:
        raise KeystoreError(f"keystore: {path} asks for {number('c')} PBKDF2 rounds, more than "
                            f"the {_MAX_PBKDF2_ROUNDS} allowed")


def _checksum(address: bytes) -> str:
    return to_checksum_address(address)


def keystore_dir(datadir: Path) -> Path:
    return Path(datadir) / "keystore"


# --- private key input ---------------------------------------------------------------------------


def validate_private_key(private_key: bytes) -> bytes:
    """Return ``private_key`` if it is a valid secp256k1 private key, else raise KeystoreError."""
    if not isinstance(private_key, bytes | bytearray) or len(private_key) != 32:
        raise KeystoreError("private key must be 32 bytes (64 hex characters)")
    if not 1 <= int.from_bytes(private_key, "big") < SECP256K1_N:
        raise KeystoreError("private key is out of range for secp256k1 (must be in 1..n-1)")
    return bytes(private_key)


def parse_private_key(text: str) -> bytes:
    """Parse a hex private key (64 hex digits, ``0x`` optional, surrounding whitespace ignored)."""
    s = text.strip()
    if s[:2] in ("0x", "0X"):
        s = s[2:]
    if len(s) != 64:
        raise KeystoreError("private key must be 32 bytes (64 hex characters)")
    try:
        key = bytes.fromhex(s)
    except ValueError:
        raise KeystoreError("private key is not valid hex") from None
    return validate_private_key(key)


def _address_of(private_key: bytes) -> bytes:
    return bytes.fromhex(Account.from_key(private_key).address[2:])


# --- reading key files ---------------------------------------------------------------------------


def _read_keyfile(path: Path) -> tuple[bytes, dict[str, Any]] | None:
    """(address, parsed JSON) if ``path`` looks like a v3 keystore file, else None."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_KEYFILE_SIZE:
            return None
        raw = path.read_bytes()
        if len(raw) > _MAX_KEYFILE_SIZE or raw.count(b"[") + raw.count(b"{") > _MAX_KEYFILE_BRACKETS:
            return None
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    crypto = data.get("crypto", data.get("Crypto"))
    address = data.get("address")
    if not isinstance(crypto, dict) or not isinstance(address, str):
        return None
    if address[:2] in ("0x", "0X"):
        address = address[2:]
    if len(address) != 40:
        return None
    try:
        return bytes.fromhex(address), data
    except ValueError:
        return None


def list_accounts(keystore: Path) -> list[tuple[bytes, Path]]:
    """(address, path) of every keystore file in ``keystore``, sorted by file name.

    Hidden files, temp files, directories and files that are not keystore JSON are skipped.
    A missing directory holds no accounts.
    """
    keystore = Path(keystore)
    try:
        entries = sorted(keystore.iterdir(), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise KeystoreError(f"keystore: cannot read {keystore}: {e.strerror or e}") from None
    accounts = []
    for path in entries:
        if path.name.startswith(".") or path.name.endswith("~"):
            continue
        parsed = _read_keyfile(path)
        if parsed is not None:
            accounts.append((parsed[0], path))
    return accounts


def find_account(keystore: Path, address: bytes) -> Path | None:
    """The key file holding ``address`` in ``keystore``, or None."""
    for addr, path in list_accounts(keystore):
        if addr == address:
            return path
    return None


def _find_keyfile(keystore: Path, address: bytes | None) -> Path:
    accounts = list_accounts(keystore)
    if address is None:
        if len(accounts) == 1:
            return accounts[0][1]
        if not accounts:
            raise KeystoreError(f"keystore: no accounts in {keystore}")
        raise KeystoreError(f"keystore: {keystore} holds {len(accounts)} accounts; say which address to use")
    matches = [path for addr, path in accounts if addr == address]
    if not matches:
        raise KeystoreError(f"keystore: no account {_checksum(address)} in {keystore}")
    if len(matches) > 1:
        raise KeystoreError(
            f"keystore: {len(matches)} files in {keystore} hold {_checksum(address)}; remove all but one"
        )
    return matches[0]


def load_private_key(path_or_keystore: Path, address: bytes | None, password: str) -> bytes:
    """Decrypt a private key.

    ``path_or_keystore`` is either one key file or a keystore directory. In a directory the file
    is found by ``address`` (or, with ``address`` None, the directory must hold exactly one
    account). Given a file and an address, the file must hold that address.
    """
    path = Path(path_or_keystore)
    if address is not None and len(address) != 20:
        raise KeystoreError("keystore: address must be 20 bytes")
    if path.is_dir():
        path = _find_keyfile(path, address)
    elif not path.exists():
        raise KeystoreError(f"keystore: no such file or directory: {path}")
    parsed = _read_keyfile(path)
    if parsed is None:
        raise KeystoreError(f"keystore: {path} is not a keystore file (corrupt or not JSON)")
    file_address, data = parsed
    if address is not None and file_address != address:
        raise KeystoreError(f"keystore: {path} holds {_checksum(file_address)}, not {_checksum(address)}")
    _check_kdf_cost(path, data)
    try:
        key = bytes(Account.decrypt(data, password))
    except ValueError as e:
        if "MAC mismatch" in str(e):
            raise KeystoreError(f"keystore: wrong password for {_checksum(file_address)}") from None
        raise KeystoreError(f"keystore: {path} is corrupt ({e})") from None
    except Exception as e:  # malformed params: KeyError, TypeError, unsupported cipher ...
        raise KeystoreError(f"keystore: {path} is corrupt ({type(e).__name__}: {e})") from None
    try:
        validate_private_key(key)
        derived = _address_of(key)
    except Exception:
        raise KeystoreError(f"keystore: {path} is corrupt (invalid private key)") from None
    if derived != file_address:
        raise KeystoreError(f"keystore: {path} is corrupt (key does not match address)")
    return key


# --- writing key files ---------------------------------------------------------------------------


def _keyfile_name(address: bytes) -> str:
    """geth's keyFileName: UTC--<ISO 8601 with '-' for ':' and nanoseconds>--<hex address>."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H-%M-%S")
    return f"UTC--{stamp}.{frac:09d}Z--{address.hex()}"


def _ensure_dir(keystore: Path) -> None:
    if keystore.is_dir():
        return
    try:
        keystore.parent.mkdir(parents=True, exist_ok=True)
        keystore.mkdir(mode=0o700)
        os.chmod(keystore, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        if not keystore.is_dir():
            raise KeystoreError(f"keystore: {keystore} exists and is not a directory") from None
    except OSError as e:
        raise KeystoreError(f"keystore: cannot create {keystore}: {e.strerror or e}") from None


def _new_private_key() -> bytes:
    while True:
        key = secrets.token_bytes(32)
        if 1 <= int.from_bytes(key, "big") < SECP256K1_N:
            return key


def create_account(
    keystore: Path,
    password: str,
    private_key: bytes | None = None,
    kdf_iterations: int | None = None,
) -> tuple[bytes, Path]:
    """Encrypt ``private_key`` (a fresh random key if None) into a new file in ``keystore``.

    ``kdf_iterations`` is scrypt's N (a power of two); None keeps eth-account's default.
    Returns (address, path of the new file).
    """
    keystore = Path(keystore)
    key = _new_private_key() if private_key is None else validate_private_key(private_key)
    address = _address_of(key)
    if find_account(keystore, address) is not None:
        raise KeystoreError(f"account {_checksum(address)} already exists")
    if kdf_iterations is not None and (kdf_iterations < 2 or kdf_iterations & (kdf_iterations - 1)):
        raise KeystoreError("scrypt iterations must be a power of two, at least 2")
    data = Account.encrypt(key, password, kdf="scrypt", iterations=kdf_iterations)
    data["address"] = address.hex()  # geth writes lowercase hex
    _ensure_dir(keystore)
    path = keystore / _keyfile_name(address)
    try:
        atomic_write(path, json.dumps(data).encode())
    except OSError as e:
        raise KeystoreError(f"keystore: cannot write {path}: {e.strerror or e}") from None
    return address, path
