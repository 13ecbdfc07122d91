"""jsontext.loads_bounded: size, then nesting, then json.loads — each refusal one clear line.

The process running these tests has imported py-evm (conftest imports the chain), so its recursion
limit is 10^5: a nesting bound that failed here would kill the run, not fail a test.
"""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from ogpu_node.jsontext import MAX_NESTING, JsonBoundsError, loads_bounded
from tests.malformed_documents import nested_prescription

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_the_recursion_limit_here_is_the_one_that_crashes():
    assert sys.getrecursionlimit() >= 100_000


@pytest.mark.parametrize("text", [b'{"a": [1, {"b": null}]}', '{"a": [1, {"b": null}]}', bytearray(b"[]")])
def test_documents_within_the_bounds_parse(text):
    assert loads_bounded(text, max_bytes=100) in ({"a": [1, {"b": None}]}, [])


def test_the_nesting_bound_counts_levels():
    at_limit = b"[" * MAX_NESTING + b"]" * MAX_NESTING
    assert loads_bounded(at_limit, max_bytes=1 << 20) is not None
    with pytest.raises(JsonBoundsError, match=f"^nests deeper than {MAX_NESTING} levels$"):
        loads_bounded(b"[" + at_limit + b"]", max_bytes=1 << 20)
    assert loads_bounded(b'["' + b"[" * 1000 + b'"]', max_bytes=1 << 20) == ["[" * 1000]  # strings do not count


@pytest.mark.parametrize("text", [DEEP, DEEP.decode(), nested_prescription()])
def test_deep_text_is_refused_before_it_is_parsed(text):
    with pytest.raises(JsonBoundsError, match="nests deeper than 64 levels"):
        loads_bounded(text, max_bytes=1 << 20)


def test_size_is_checked_first_in_bytes():
    with pytest.raises(JsonBoundsError, match="^larger than 10 bytes$"):
        loads_bounded(b" " * 11, max_bytes=10)
    with pytest.raises(JsonBoundsError, match="^larger than 10 bytes$"):
        loads_bounded('"' + "é" * 5 + '"', max_bytes=10)  # 7 characters, 12 bytes


@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe{}", b"", b"1" * 5000, b"[1,]"],
                         ids=["not-json", "not-utf8", "empty", "5000-digit-int", "trailing-comma"])
def test_what_json_refuses_is_one_typed_error(text):
    with pytest.raises(JsonBoundsError, match=r"^not valid JSON \("):
        loads_bounded(text, max_bytes=1 << 20)


def test_task_submit_refuses_a_deep_prescription_file_with_one_line(tmp_path):
    """Issue 10: `task submit` of a 100,000-deep file used to kill the CLI with SIGSEGV."""
    from ogpu_node.cli.main import cli

    deep, data = tmp_path / "deep.json", tmp_path / "data.bin"
    deep.write_bytes(nested_prescription())
    data.write_bytes(b"x")
    result = CliRunner().invoke(cli, ["task", "submit", str(deep), "--data", str(data), "--rpc-url",
                                      "http://127.0.0.1:9", "--private-key", "0x" + "11" * 32])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {deep} is not a prescription: nests deeper than 64 levels"
