"""Blobs over the node's HTTP endpoint (docs/rpc.md "Blobs"): streamed, hash-checked uploads and
downloads. A blob's name is its Merkle root, so every byte received is checked against it. Uploads are
signed over (chain id, hash, size) by the client's key: the node charges them to that account."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import requests

from ogpu_node.apps.client.errors import (
    BlobNotFound,
    BlobRejected,
    ClientError,
    KeyRequired,
    NodeError,
    UploadRefused,
    translate,
)
from ogpu_node.apps.client.results import header_bound
from ogpu_node.files import atomic_file
from ogpu_node.types.merkle import CHUNK_SIZE, MerkleHasher, merkle_root

Progress = Callable[[int], None]  # called with the bytes sent or received so far
SignUpload = Callable[[bytes, int], str]  # (blob hash, size) -> the Authorization header value


def file_blob_hash(path: Path) -> bytes:
    """The blob hash (Merkle root) of a file, read in chunks."""
    hasher = MerkleHasher()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.digest()


class _CountingReader:
    """A file that reports how much of it was read: requests streams it with its Content-Length."""

    def __init__(self, f: BinaryIO, size: int, progress: Progress) -> None:
        self._f, self._size, self._progress, self._done = f, size, progress, 0

    def __len__(self) -> int:
        return self._size - self._done

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self._done += len(chunk)
        self._progress(self._done)
        return chunk


class BlobClient:
    """The blob endpoint of the node at ``rpc_url``."""

    def __init__(self, rpc_url: str, timeout: float, sign: SignUpload | None = None) -> None:
        """``sign``: signs uploads (`Rpc.sign_blob_upload`); without it only downloads work."""
        self.rpc_url = rpc_url
        self.timeout = timeout
        self._sign = sign

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        return translate(what, self.rpc_url, fn, *args)

    # -- uploads --

    def upload_blob(self, path: Path, progress: Progress | None = None) -> tuple[bytes, int]:
        """Stream ``path`` to ``PUT /blobs/<hash>`` (hash computed locally, checked by the node)."""
        path = Path(path)
        try:
            expected = file_blob_hash(path)
            size = path.stat().st_size
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None

        authorization = self._authorize(expected, size)

        def put() -> requests.Response:
            with open(path, "rb") as body:  # a file object: requests streams it with Content-Length
                reader = body if progress is None else _CountingReader(body, size, progress)
                return self._put(expected, authorization, reader)

        return self._check_upload(path.name, expected, size, self._guard(f"upload of {path.name}", put))

    def upload_bytes(self, name: str, data: bytes) -> tuple[bytes, int]:
        """Upload ``data`` as a blob (``name`` is for messages only)."""
        expected = merkle_root(data)
        authorization = self._authorize(expected, len(data))
        response = self._guard(f"upload of {name}", self._put, expected, authorization, data)
        return self._check_upload(name, expected, len(data), response)

    def _authorize(self, blob_hash: bytes, size: int) -> str:
        if self._sign is None:
            raise KeyRequired("a key is needed to upload blobs (the node charges uploads to a funded account)")
        return self._sign(blob_hash, size)

    def _put(self, expected: bytes, authorization: str, body: Any) -> requests.Response:
        headers = {"Content-Type": "application/octet-stream", "Authorization": authorization}
        return requests.put(f"{self.rpc_url}/blobs/0x{expected.hex()}", data=body, timeout=self.timeout,
                            headers=headers)

    @staticmethod
    def _check_upload(name: str, expected: bytes, size: int, response: requests.Response) -> tuple[bytes, int]:
        if response.status_code not in (200, 201):
            try:
                detail = response.json().get("error", response.text)
            except ValueError:
                detail = response.text.strip() or response.reason
            raise UploadRefused(f"upload of {name} refused ({response.status_code}): {detail}")
        answer = response.json()
        if answer.get("hash", "").lower() != "0x" + expected.hex() or answer.get("size") != size:
            raise UploadRefused(f"upload of {name}: the node stored {answer}, expected 0x{expected.hex()}")
        return expected, size

    # -- downloads --

    @contextmanager
    def _get(self, blob_hash: bytes) -> Iterator[requests.Response]:
        response = requests.get(f"{self.rpc_url}/blobs/0x{blob_hash.hex()}", stream=True, timeout=self.timeout)
        with response:
            if response.status_code == 404:
                raise BlobNotFound(blob_hash, self.rpc_url)
            if response.status_code != 200:
                raise NodeError(f"download of blob 0x{blob_hash.hex()}: HTTP {response.status_code}")
            yield response

    def fetch_blob(self, blob_hash: bytes, max_bytes: int = 1 << 31) -> bytes:
        """Blob ``blob_hash`` in memory, hashed while it streams; ClientError if it is missing, larger
        than ``max_bytes`` or does not hash to its name."""
        def fetch() -> bytes:
            with self._get(blob_hash) as response:
                hasher, parts = MerkleHasher(), []
                for chunk in response.iter_content(CHUNK_SIZE):
                    hasher.update(chunk)
                    parts.append(chunk)
                    if hasher.size > max_bytes:
                        raise BlobRejected(f"blob 0x{blob_hash.hex()} is larger than {max_bytes} bytes")
            if hasher.digest() != blob_hash:
                raise BlobRejected(f"blob 0x{blob_hash.hex()}: the node sent {hasher.size} bytes hashing to "
                                   f"0x{hasher.digest().hex()}; refused")
            return b"".join(parts)

        return self._guard(f"download of blob 0x{blob_hash.hex()}", fetch)

    def download_blob(self, blob_hash: bytes, out_path: Path, progress: Progress | None = None) -> int:
        """Stream blob ``blob_hash`` into ``out_path``, hashing it on the way; the file appears (atomically)
        only if the bytes hash to ``blob_hash``. Returns the size."""
        out_path = Path(out_path)

        def fetch() -> int:
            with self._get(blob_hash) as response, atomic_file(out_path) as out:
                hasher = MerkleHasher()
                for chunk in response.iter_content(CHUNK_SIZE):
                    hasher.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(hasher.size)
                if hasher.digest() != blob_hash:
                    raise BlobRejected(f"blob 0x{blob_hash.hex()}: the node sent {hasher.size} bytes hashing to "
                                       f"0x{hasher.digest().hex()}; refused, nothing written")
                return hasher.size

        try:
            return self._guard(f"download of blob 0x{blob_hash.hex()}", fetch)
        except OSError as exc:
            raise ClientError(f"cannot write {out_path}: {exc.strerror or exc}") from None

    def fetch_header(self, blob_hash: bytes) -> bytes:
        """The start of a safetensors blob: its 8-byte length and its header (bounded by `header_bound()`), not
        the tensors. A partial read cannot be hash-checked: use it for display only."""
        bound = header_bound()

        def fetch() -> bytes:
            with self._get(blob_hash) as response:
                data = bytearray()
                for chunk in response.iter_content(64 * 1024):
                    data += chunk
                    if len(data) >= 8 and len(data) >= 8 + min(int.from_bytes(data[:8], "little"), bound):
                        break
                return bytes(data)

        return self._guard(f"download of checkpoint 0x{blob_hash.hex()}", fetch)


__all__ = ["BlobClient", "Progress", "SignUpload", "file_blob_hash"]
