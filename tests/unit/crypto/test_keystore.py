"""ogpu_node.crypto.keystore: geth-format encrypted key files."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from ogpu_node.crypto.keys import private_key_to_address
from ogpu_node.crypto.keystore import (
    SECP256K1_N,
    KeystoreError,
    create_account,
    find_account,
    keystore_dir,
    list_accounts,
    load_private_key,
    parse_private_key,
    validate_private_key,
)

FAST = 2**10  # scrypt N for tests
KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
ADDRESS = bytes.fromhex("f39fd6e51aad88f6f4ce6ab8827279cfffb92266")


@pytest.fixture
def ks(tmp_path):
    return keystore_dir(tmp_path / "data")


def test_keystore_dir(tmp_path):
    assert keystore_dir(tmp_path) == tmp_path / "keystore"


def test_round_trip_random_key(ks):
    address, path = create_account(ks, "secret", kdf_iterations=FAST)
    assert len(address) == 20
    assert path.parent == ks
    key = load_private_key(path, address, "secret")
    assert private_key_to_address(key) == address
    # The directory form finds the file by address, or takes the only account.
    assert load_private_key(ks, address, "secret") == key
    assert load_private_key(ks, None, "secret") == key


def test_round_trip_given_key_and_geth_file_name(ks):
    address, path = create_account(ks, "pw", KEY, kdf_iterations=FAST)
    assert address == ADDRESS
    assert re.fullmatch(r"UTC--\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{9}Z--" + ADDRESS.hex(), path.name)
    data = json.loads(path.read_text())
    assert data["version"] == 3
    assert data["address"] == ADDRESS.hex()
    assert data["crypto"]["kdf"] == "scrypt"
    assert data["crypto"]["kdfparams"]["n"] == FAST
    assert KEY.hex() not in path.read_text()
    assert load_private_key(path, None, "pw") == KEY


def test_file_and_dir_modes(ks):
    _, path = create_account(ks, "pw", kdf_iterations=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ks.stat().st_mode) == 0o700
    # No temp files are left behind.
    assert [p.name for p in ks.iterdir()] == [path.name]


def test_wrong_password(ks):
    _, path = create_account(ks, "right", KEY, kdf_iterations=FAST)
    with pytest.raises(KeystoreError) as err:
        load_private_key(path, ADDRESS, "wrong")
    assert str(err.value) == "keystore: wrong password for 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert KEY.hex() not in str(err.value)


def test_duplicate_import_rejected(ks):
    create_account(ks, "pw", KEY, kdf_iterations=FAST)
    with pytest.raises(
        KeystoreError, match=r"^account 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 already exists$"
    ):
        create_account(ks, "other", KEY, kdf_iterations=FAST)
    assert len(list_accounts(ks)) == 1


def test_list_sorted_and_skips_non_keystore_files(ks):
    a1, p1 = create_account(ks, "pw", kdf_iterations=FAST)
    a2, p2 = create_account(ks, "pw", KEY, kdf_iterations=FAST)
    (ks / "README").write_text("not json")
    (ks / "broken.json").write_text('{"address": "zz", "crypto": ')
    (ks / "array.json").write_text("[1, 2]")
    (ks / "noaddr.json").write_text('{"crypto": {}}')
    (ks / "binary").write_bytes(b"\xff\xfe\x00garbage")
    (ks / ".hidden").write_text(p1.read_text())
    (ks / "subdir").mkdir()
    accounts = list_accounts(ks)
    assert accounts == sorted([(a1, p1), (a2, p2)], key=lambda t: t[1].name)
    assert find_account(ks, ADDRESS) == p2
    assert find_account(ks, b"\x01" * 20) is None


def test_list_missing_dir_is_empty(tmp_path):
    assert list_accounts(tmp_path / "nope") == []


def test_corrupt_file_errors(ks):
    _, path = create_account(ks, "pw", KEY, kdf_iterations=FAST)
    bad = ks / "bad"
    bad.write_text("{ not json")
    with pytest.raises(KeystoreError, match="not a keystore file"):
        load_private_key(bad, None, "pw")
    data = json.loads(path.read_text())
    del data["crypto"]["kdfparams"]
    broken = ks.parent / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(KeystoreError, match="corrupt") as err:
        load_private_key(broken, None, "pw")
    assert "\n" not in str(err.value)
    # Address field tampered with: the key decrypts but belongs to another address.
    data = json.loads(path.read_text())
    data["address"] = "11" * 20
    swapped = ks.parent / "swapped.json"
    swapped.write_text(json.dumps(data))
    with pytest.raises(KeystoreError, match="does not match"):
        load_private_key(swapped, None, "pw")


def test_no_such_account(ks, tmp_path):
    with pytest.raises(KeystoreError, match="no such file"):
        load_private_key(tmp_path / "missing", None, "pw")
    create_account(ks, "pw", KEY, kdf_iterations=FAST)
    with pytest.raises(KeystoreError, match=r"no account 0x0101010101010101010101010101010101010101 in"):
        load_private_key(ks, b"\x01" * 20, "pw")
    create_account(ks, "pw", kdf_iterations=FAST)
    with pytest.raises(KeystoreError, match="holds 2 accounts"):
        load_private_key(ks, None, "pw")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeystoreError, match="no accounts"):
        load_private_key(empty, None, "pw")


def test_file_address_mismatch(ks):
    _, path = create_account(ks, "pw", KEY, kdf_iterations=FAST)
    with pytest.raises(KeystoreError, match="holds 0xf39F"):
        load_private_key(path, b"\x02" * 20, "pw")


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"\x01" * 31,
        b"\x01" * 33,
        b"\x00" * 32,
        SECP256K1_N.to_bytes(32, "big"),
        (SECP256K1_N + 1).to_bytes(32, "big"),
        b"\xff" * 32,
    ],
)
def test_invalid_private_keys_rejected(ks, key):
    with pytest.raises(KeystoreError, match="private key"):
        validate_private_key(key)
    with pytest.raises(KeystoreError, match="private key"):
        create_account(ks, "pw", key, kdf_iterations=FAST)
    assert not ks.exists() or list_accounts(ks) == []


def test_boundary_private_keys_accepted():
    assert validate_private_key((1).to_bytes(32, "big")) == (1).to_bytes(32, "big")
    top = (SECP256K1_N - 1).to_bytes(32, "big")
    assert validate_private_key(top) == top


@pytest.mark.parametrize(
    "text",
    [KEY.hex(), "0x" + KEY.hex(), "0X" + KEY.hex().upper(), "  " + KEY.hex() + "\n"],
)
def test_parse_private_key(text):
    assert parse_private_key(text) == KEY


@pytest.mark.parametrize(
    "text",
    ["", "0x", KEY.hex()[:-2], KEY.hex() + "00", "zz" + KEY.hex()[2:], "00" * 32, "0x" + "ff" * 32],
)
def test_parse_private_key_rejects(text):
    with pytest.raises(KeystoreError, match="private key") as err:
        parse_private_key(text)
    if text.strip():
        assert text.strip() not in str(err.value)


def test_kdf_iterations_must_be_power_of_two(ks):
    with pytest.raises(KeystoreError, match="power of two"):
        create_account(ks, "pw", kdf_iterations=1000)


def test_umask_does_not_loosen_file_mode(ks):
    old = os.umask(0)
    try:
        _, path = create_account(ks, "pw", kdf_iterations=FAST)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ks.stat().st_mode) == 0o700
