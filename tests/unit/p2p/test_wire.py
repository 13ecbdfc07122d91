"""Length-prefixed frames (ogpu_node/p2p/wire.py, docs/network.md "Request/response"): a varint length
bounded before any body byte is read, truncation and bad varints refused, EOF as py-libp2p streams
raise it, and a frame begun but never finished bounded in time."""

from __future__ import annotations

import pytest
import trio
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from ogpu_node.p2p.wire import FrameError, FrameTooLarge, encode_frame, read_frame


class FakeStream:
    """Bytes served at most ``chunk`` at a time, then EOF raised as a py-libp2p stream raises it
    (StreamEOF, an EOFError), or b"" when ``eof_as_empty``; ``stall_at`` makes reading block forever
    (or for ``stall_for`` seconds) once that many bytes were read."""

    def __init__(self, data: bytes, chunk: int = 1 << 20, *, eof_as_empty: bool = False,
                 stall_at: int | None = None, stall_for: float | None = None, error: Exception | None = None) -> None:
        self.data, self.chunk, self.eof_as_empty = data, chunk, eof_as_empty
        self.stall_at, self.stall_for, self.error = stall_at, stall_for, error
        self.position = 0
        self.asked: list[int] = []

    async def read(self, n: int) -> bytes:
        self.asked.append(n)
        if self.stall_at is not None and self.position == self.stall_at:
            self.stall_at = None
            if self.stall_for is None:
                await trio.sleep_forever()
            await trio.sleep(self.stall_for)
        if self.position >= len(self.data):
            if self.error is not None:
                raise self.error
            if self.eof_as_empty:
                return b""
            raise StreamEOF("stream closed")
        out = self.data[self.position:self.position + min(n, self.chunk)]
        self.position += len(out)
        return out


def varint(n: int) -> bytes:
    """The unsigned LEB128 varint, written independently of wire.py."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, 2_097_152])
def test_rule_a_frame_is_a_varint_length_then_the_bytes(size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert encode_frame(payload) == varint(size) + payload


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
async def test_rule_frames_read_back_whole_however_the_stream_splits_them(chunk):
    payloads = [b"", b"a", b"b" * 127, b"c" * 128, bytes(range(256)) * 1000]
    stream = FakeStream(b"".join(encode_frame(p) for p in payloads), chunk)
    for payload in payloads:
        assert await read_frame(stream, 1 << 20) == payload
    assert await read_frame(stream, 1 << 20) is None  # clean EOF between frames


@pytest.mark.parametrize("eof_as_empty", [False, True])
async def test_rule_eof_before_a_frame_begins_is_the_end_not_an_error(eof_as_empty):
    assert await read_frame(FakeStream(b"", eof_as_empty=eof_as_empty), 100) is None


async def test_rule_a_frame_of_exactly_the_bound_is_read():
    assert await read_frame(FakeStream(encode_frame(b"x" * 1000)), 1000) == b"x" * 1000


async def test_rule_a_length_over_the_bound_is_refused_before_any_body_byte_is_read():
    prefix = varint(1001)
    stream = FakeStream(prefix + b"x" * 1001)
    with pytest.raises(FrameTooLarge):
        await read_frame(stream, 1000)
    assert stream.position == len(prefix)


async def test_rule_a_huge_length_is_refused_as_soon_as_its_prefix_exceeds_the_bound():
    prefix = varint((1 << 62) - 1)  # 9 bytes; past the bound of 4 MiB by its 4th
    stream = FakeStream(prefix)
    with pytest.raises(FrameTooLarge):
        await read_frame(stream, 4 << 20)
    assert stream.position == 4
    assert max(stream.asked) == 1  # the prefix is read a byte at a time: nothing past it is taken


async def test_rule_a_length_that_never_ends_is_not_a_varint():
    with pytest.raises(FrameError) as raised:
        await read_frame(FakeStream(b"\x80" * 10 + b"\x00"), 100)  # ten continuation bytes, value 0
    assert not isinstance(raised.value, FrameTooLarge)


@pytest.mark.parametrize("eof_as_empty", [False, True])
async def test_rule_eof_inside_the_length_is_an_error(eof_as_empty):
    with pytest.raises(FrameError):
        await read_frame(FakeStream(b"\x85", eof_as_empty=eof_as_empty), 1 << 20)


@pytest.mark.parametrize("eof_as_empty", [False, True])
async def test_rule_eof_inside_the_body_is_an_error(eof_as_empty):
    with pytest.raises(FrameError, match="after 5 of 10 bytes"):
        await read_frame(FakeStream(varint(10) + b"12345", 2, eof_as_empty=eof_as_empty), 100)


async def test_rule_a_reset_is_not_turned_into_a_framing_error():
    """A peer that goes away is told apart from one that sends garbage: the stream's own error passes."""
    with pytest.raises(StreamReset):
        await read_frame(FakeStream(varint(10) + b"123", error=StreamReset("reset")), 100)


async def test_rule_a_frame_begun_must_end_within_the_timeout(autojump_clock):
    stream = FakeStream(varint(10) + b"12345", 2, stall_at=3)
    with pytest.raises(trio.TooSlowError):
        await read_frame(stream, 100, timeout=30)


async def test_rule_waiting_for_a_frame_to_begin_is_not_timed(autojump_clock):
    stream = FakeStream(encode_frame(b"late"), stall_at=0, stall_for=3600)
    assert await read_frame(stream, 100, timeout=30) == b"late"  # an hour idle, then the frame


async def test_rule_a_slow_frame_within_the_timeout_is_read(autojump_clock):
    stream = FakeStream(encode_frame(b"0123456789"), 3, stall_at=4, stall_for=29)
    assert await read_frame(stream, 100, timeout=30) == b"0123456789"
