"""`ogpu-node account new|list|import`, driven through click's CliRunner on the `account` group."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from ogpu_node.cli.account import account
from ogpu_node.cli.common import default_datadir, read_password_file
from ogpu_node.crypto.keystore import keystore_dir, load_private_key

KEY_HEX = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


@pytest.fixture
def datadir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def pwfile(tmp_path):
    p = tmp_path / "password.txt"
    p.write_text("hunter2\nignored second line\n")
    return p


@pytest.fixture
def keyfile(tmp_path):
    p = tmp_path / "key.txt"
    p.write_text("0x" + KEY_HEX + "\n")
    return p


def invoke(*args: str | Path, input: str | None = None):
    return CliRunner().invoke(account, [str(a) for a in args], input=input)


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert fragment in lines[0]
    assert KEY_HEX not in result.output


def test_new_with_password_file_then_list(datadir, pwfile):
    result = invoke("new", "--datadir", datadir, "--password-file", pwfile, "--lightkdf")
    assert result.exit_code == 0, result.output
    m = re.search(r"^Address: (0x[0-9a-fA-F]{40})$", result.stdout, re.M)
    assert m
    address = m.group(1)
    m = re.search(r"^Keystore: (.+)$", result.stdout, re.M)
    assert m
    path = Path(m.group(1))
    assert path.parent == keystore_dir(datadir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The password is the file's first line.
    key = load_private_key(path, bytes.fromhex(address[2:]), "hunter2")
    assert len(key) == 32
    assert key.hex() not in result.output

    result = invoke("list", "--datadir", datadir)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Account #0: {{{address}}} keystore://{path.absolute()}\n"


def test_new_prompts_twice_for_password(datadir):
    result = invoke("new", "--datadir", datadir, "--lightkdf", input="pw1\npw1\n")
    assert result.exit_code == 0, result.output
    assert "pw1" not in result.output  # hidden input
    address = re.search(r"^Address: (0x[0-9a-fA-F]{40})$", result.stdout, re.M).group(1)
    load_private_key(keystore_dir(datadir), bytes.fromhex(address[2:]), "pw1")


def test_new_uses_default_datadir(tmp_path, pwfile, monkeypatch):
    monkeypatch.setenv("OGPU_DATADIR", str(tmp_path / "envdata"))
    result = invoke("new", "--password-file", pwfile, "--lightkdf")
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "envdata" / "keystore") in result.stdout
    result = invoke("list")
    assert result.stdout.startswith("Account #0: {0x")


def test_import_known_key(datadir, pwfile, keyfile):
    result = invoke("import", keyfile, "--datadir", datadir, "--password-file", pwfile, "--lightkdf")
    assert result.exit_code == 0, result.output
    assert f"Address: {ADDRESS}" in result.stdout
    assert KEY_HEX not in result.output
    result = invoke("list", "--datadir", datadir)
    assert result.exit_code == 0
    assert re.fullmatch(
        r"Account #0: \{" + ADDRESS + r"\} keystore:///.*/keystore/UTC--[^ ]+--" + ADDRESS[2:].lower() + "\n",
        result.stdout,
    )
    key = load_private_key(keystore_dir(datadir), bytes.fromhex(ADDRESS[2:]), "hunter2")
    assert key.hex() == KEY_HEX


def test_list_numbers_accounts_in_file_order(datadir, pwfile, keyfile):
    invoke("import", keyfile, "--datadir", datadir, "--password-file", pwfile, "--lightkdf")
    invoke("new", "--datadir", datadir, "--password-file", pwfile, "--lightkdf")
    (keystore_dir(datadir) / "notes.txt").write_text("not a key")
    result = invoke("list", "--datadir", datadir)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Account #0", "Account #1"]
    assert ADDRESS in lines[0]  # imported first, so its file name sorts first


def test_list_empty(datadir):
    result = invoke("list", "--datadir", datadir)
    assert result.exit_code == 0
    assert result.stdout == ""


def test_import_duplicate_is_one_line_error(datadir, pwfile, keyfile):
    assert (
        invoke("import", keyfile, "--datadir", datadir, "--password-file", pwfile, "--lightkdf").exit_code
        == 0
    )
    # No password is asked for: the check comes first.
    result = invoke("import", keyfile, "--datadir", datadir)
    assert_one_line_error(result, f"account {ADDRESS} already exists")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "64 hex characters"),
        ("0x1234", "64 hex characters"),
        ("zz" + KEY_HEX[2:], "not valid hex"),
        ("00" * 32, "out of range"),
        ("ff" * 32, "out of range"),
        ('{"address": "f39fd6e51aad88f6f4ce6ab8827279cfffb92266", "crypto": {}}', "64 hex characters"),
    ],
)
def test_import_invalid_key_is_one_line_error(tmp_path, datadir, pwfile, content, fragment):
    bad = tmp_path / "bad.key"
    bad.write_text(content)
    result = invoke("import", bad, "--datadir", datadir, "--password-file", pwfile)
    assert_one_line_error(result, fragment)
    assert str(bad) in result.stderr
    if content:
        assert content not in result.output


def test_import_missing_key_file(tmp_path, datadir, pwfile):
    result = invoke("import", tmp_path / "nope.key", "--datadir", datadir, "--password-file", pwfile)
    assert_one_line_error(result, "cannot read key file")


def test_missing_password_file(tmp_path, datadir):
    result = invoke("new", "--datadir", datadir, "--password-file", tmp_path / "nope.txt")
    assert_one_line_error(result, "cannot read password file")
    assert not keystore_dir(datadir).exists()


def test_empty_password_file(tmp_path, datadir, keyfile):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = invoke("import", keyfile, "--datadir", datadir, "--password-file", empty)
    assert_one_line_error(result, "is empty")


def test_datadir_is_a_file(tmp_path, pwfile):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("new", "--datadir", blocker / "sub", "--password-file", pwfile, "--lightkdf")
    assert_one_line_error(result, "cannot create")


def test_read_password_file_first_line(tmp_path):
    p = tmp_path / "pw"
    p.write_text("  spaced pw \r\nsecond\n")
    assert read_password_file(p) == "  spaced pw "
    p.write_text("no newline")
    assert read_password_file(p) == "no newline"


def test_default_datadir(monkeypatch, tmp_path):
    monkeypatch.setenv("OGPU_DATADIR", str(tmp_path / "x"))
    assert default_datadir() == tmp_path / "x"
    monkeypatch.delenv("OGPU_DATADIR")
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_datadir() == tmp_path / "xdg" / "ogpu-node"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_datadir() == tmp_path / "home" / ".local" / "share" / "ogpu-node"
    monkeypatch.setattr("sys.platform", "darwin")
    assert default_datadir() == tmp_path / "home" / "Library" / "Application Support" / "ogpu-node"
