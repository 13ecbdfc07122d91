"""A keystore file is parsed only within bounds (issue 10): py-evm raises the recursion limit to
10^5, and json.loads of a small file of nested brackets would overflow the C stack."""

from __future__ import annotations

import pytest

from ogpu_node.crypto.keystore import KeystoreError, list_accounts, load_private_key


@pytest.mark.parametrize("text", [
    b'{"address": "' + b"ab" * 20 + b'", "crypto": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    b'{"address": "' + b"ab" * 20 + b'", "crypto": {"x": ' + b"[" * 70 + b"]" * 70 + b"}}",
], ids=["30k-deep", "70-deep"])
def test_a_deeply_nested_file_is_not_a_keystore_file(tmp_path, text):
    path = tmp_path / "keystore" / "UTC--deep"
    path.parent.mkdir()
    path.write_bytes(text)
    assert list_accounts(path.parent) == []
    with pytest.raises(KeystoreError, match="is not a keystore file"):
        load_private_key(path, None, "password")


@pytest.mark.parametrize("kdf, field, value, words", [
    ("scrypt", "n", 1 << 40, "asks scrypt for"),
    ("scrypt", "r", 1 << 30, "asks scrypt for"),
    ("pbkdf2", "c", 10**12, "PBKDF2 rounds"),
])
def test_a_key_file_asking_for_an_unbounded_kdf_is_refused_before_decrypting(tmp_path, kdf, field, value, words):
    import json

    from ogpu_node.crypto.keystore import LIGHT_SCRYPT_N, create_account

    _, path = create_account(tmp_path / "keystore", "pw", b"\x01" * 32, kdf_iterations=LIGHT_SCRYPT_N)
    data = json.loads(path.read_text())
    data["crypto"]["kdf"] = kdf
    data["crypto"]["kdfparams"][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(KeystoreError, match=words):
        load_private_key(path, None, "pw")
