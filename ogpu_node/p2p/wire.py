"""Length-prefixed frames on a libp2p stream (docs/network.md, "Request/response"): an unsigned varint
length, then that many bytes. The length is checked against the caller's bound before any byte of the
body is read, so a peer cannot make the node buffer more than the bound."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import rlp.codec
import trio


class FrameError(Exception):
    """The bytes on the stream are not a frame within the bound (too long, a bad varint, cut short)."""


class FrameTooLarge(FrameError):
    pass


def encode_frame(payload: bytes) -> bytes:
    length = len(payload)
    prefix = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            prefix.append(byte | 0x80)
        else:
            prefix.append(byte)
            return bytes(prefix) + payload


async def _read(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes; b"" at the end of the stream (py-libp2p raises EOFError there)."""
    try:
        return await stream.read(n)
    except EOFError:
        return b""


async def read_frame(stream: Any, max_bytes: int, timeout: float | None = None) -> bytes | None:
    """The next frame's payload, or None when the stream ended cleanly before a frame began.

    ``timeout``: seconds from the frame's first byte to its last (trio.TooSlowError past it), so a peer
    that starts a frame and never finishes it cannot hold the buffer; waiting for a frame to begin is
    the caller's to bound."""
    first = await _read(stream, 1)
    if not first:
        return None
    with trio.fail_after(timeout) if timeout is not None else nullcontext():
        return await _read_rest(stream, first, max_bytes)


async def _read_rest(stream: Any, first: bytes, max_bytes: int) -> bytes:
    length = shift = 0
    byte = first
    for index in range(10):
        if index:
            byte = await _read(stream, 1)
            if not byte:
                raise FrameError("stream ended inside a frame's length")
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if length > max_bytes:
            raise FrameTooLarge(f"frame of more than {max_bytes} bytes")
        if not byte[0] & 0x80:
            break
    else:
        raise FrameError("frame length is not a varint")
    chunks, got = [], 0
    while got < length:
        chunk = await _read(stream, length - got)
        if not chunk:
            raise FrameError(f"stream ended after {got} of {length} bytes of a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def rlp_items_within(data: bytes, max_items: int) -> bool:
    """Whether ``data`` holds at most ``max_items`` RLP items, counted at every depth by walking their
    length prefixes, without decoding: pyrlp's decoding is quadratic in a list's item count, so bytes
    from a peer are counted before they are decoded. False also for bytes whose prefixes do not parse."""
    position = items = 0
    try:
        while position < len(data):
            _, kind, length, start = rlp.codec.consume_length_prefix(data, position)
            items += 1
            if items > max_items:
                return False
            if start + length > len(data):
                return False  # an item longer than the bytes left
            position = start if kind is list else start + length
    except Exception:  # a prefix that does not parse: the decoder would refuse it too
        return False
    return True
