"""`ogpu-node validator slashing-protection export|import` in-process: EIP-3076 interchange files
(version 5) round-trip into a fresh datadir, and bad files are one clear error that changes nothing
(docs/consensus.md, "Slashing protection")."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from ogpu_node.cli.main import cli
from ogpu_node.consensus import SigningRefused
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.crypto.keystore import LIGHT_SCRYPT_N, create_account
from ogpu_node.node.slashing_interchange import MAX_INTERCHANGE_BYTES
from ogpu_node.node.slashing_protection import SlashingProtection, protection_path
from ogpu_node.node.validator_key import randao_chain

KEYPAIR = Keypair.from_private_key(keccak(b"slashing protection cli test"))
ADDRESS = "0x" + KEYPAIR.address.hex()
RANDAO_LENGTH = 16


def root(n: int) -> bytes:
    return keccak(n.to_bytes(8, "big"))


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(result: tuple[int, str, str], *fragments: str) -> None:
    code, out, err = result
    assert code == 1 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _genesis(path, genesis_time: int = 1_700_000_000):
    tip = randao_chain(KEYPAIR.private_key, RANDAO_LENGTH).tip
    path.write_text(json.dumps({
        "config": {"chainId": 99}, "alloc": {},
        "consensus": {"genesisTime": genesis_time, "slotTime": 1, "slotsPerEpoch": 4, "randaoLength": RANDAO_LENGTH,
                      "validators": [{"address": ADDRESS, "stake": 10**21, "randaoTip": "0x" + tip.hex()}]},
    }))
    return path


def _init(datadir, genesis) -> bytes:
    code, out, err = run("init", "--datadir", datadir, genesis)
    assert code == 0, err
    return bytes.fromhex(re.search(r"hash=0x([0-9a-f]{64})", out).group(1))


@pytest.fixture
def chain_of_two(tmp_path):
    """A datadir whose validator signed blocks 5, 6 and votes 0→1, 1→2; a fresh datadir of the same chain."""
    genesis = _genesis(tmp_path / "genesis.json")
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    genesis_hash = _init(first, genesis)
    assert _init(fresh, genesis) == genesis_hash
    with SlashingProtection.open(first, KEYPAIR.address, genesis_hash) as guard:
        guard.check_and_record_proposal(5, root(5))
        guard.check_and_record_proposal(6, root(6))
        guard.check_and_record_attestation(0, 1, root(1))
        guard.check_and_record_attestation(1, 2, root(2))
    return first, fresh, genesis_hash


def test_export_then_import_into_a_fresh_datadir_carries_the_protection(chain_of_two, tmp_path):
    first, fresh, genesis_hash = chain_of_two
    code, out, err = run("validator", "slashing-protection", "export", "--datadir", first)
    assert code == 0, err
    assert json.loads(out) == {
        "metadata": {"interchange_format_version": "5", "genesis_validators_root": "0x" + genesis_hash.hex()},
        "data": [{"pubkey": ADDRESS,
                  "signed_blocks": [{"slot": "5", "signing_root": "0x" + root(5).hex()},
                                    {"slot": "6", "signing_root": "0x" + root(6).hex()}],
                  "signed_attestations": [
                      {"source_epoch": "0", "target_epoch": "1", "signing_root": "0x" + root(1).hex()},
                      {"source_epoch": "1", "target_epoch": "2", "signing_root": "0x" + root(2).hex()}]}],
    }
    exported = tmp_path / "interchange.json"
    code, _, err = run("validator", "slashing-protection", "export", "--datadir", first, "--address", ADDRESS,
                       "--output", exported)
    assert code == 0 and json.loads(exported.read_text()) == json.loads(out), err

    code, out, err = run("validator", "slashing-protection", "import", "--datadir", fresh, "--input", exported)
    assert code == 0, err
    assert out == (f"{ADDRESS}: no proposal at or below slot 6, no attestation with a source below epoch 1 "
                   "or a target at or below 2\n")
    with SlashingProtection.open(fresh, KEYPAIR.address, genesis_hash) as guard:
        for call, args in ((guard.check_and_record_proposal, (6, root(7))),
                           (guard.check_and_record_proposal, (4, root(4))),
                           (guard.check_and_record_attestation, (1, 2, root(9))),
                           (guard.check_and_record_attestation, (0, 3, root(3)))):  # would surround 1→2
            with pytest.raises(SigningRefused):
                call(*args)
        guard.check_and_record_proposal(7, root(7))
        guard.check_and_record_attestation(2, 3, root(3))
    # Exported again, the fresh datadir's record holds the watermarks as signing-root-less entries.
    code, out, err = run("validator", "slashing-protection", "export", "--datadir", fresh)
    assert code == 0, err
    assert json.loads(out)["data"] == [{
        "pubkey": ADDRESS,
        "signed_blocks": [{"slot": "6"}, {"slot": "7", "signing_root": "0x" + root(7).hex()}],
        "signed_attestations": [{"source_epoch": "1", "target_epoch": "2"},
                                {"source_epoch": "2", "target_epoch": "3", "signing_root": "0x" + root(3).hex()}]}]
    # Importing the same file again keeps the higher record: nothing changes.
    before = protection_path(fresh, KEYPAIR.address).read_bytes()
    assert run("validator", "slashing-protection", "import", "--datadir", fresh, "--input", exported)[0] == 0
    code, again, _ = run("validator", "slashing-protection", "export", "--datadir", fresh)
    assert json.loads(again) == json.loads(out) and protection_path(fresh, KEYPAIR.address).read_bytes() == before


def test_export_by_keystore_reads_addresses_without_the_password(chain_of_two, tmp_path):
    first, _, _ = chain_of_two
    keystore = tmp_path / "keystore"
    create_account(keystore, "pw", KEYPAIR.private_key, kdf_iterations=LIGHT_SCRYPT_N)
    code, out, err = run("validator", "slashing-protection", "export", "--datadir", first, "--keystore", keystore)
    assert code == 0, err
    assert [d["pubkey"] for d in json.loads(out)["data"]] == [ADDRESS]
    other = tmp_path / "other-keystore"
    create_account(other, "pw", keccak(b"not a validator"), kdf_iterations=LIGHT_SCRYPT_N)
    assert_one_line_error(run("validator", "slashing-protection", "export", "--datadir", first, "--keystore", other),
                          "no slashing-protection record")
    assert_one_line_error(run("validator", "slashing-protection", "export", "--datadir", tmp_path / "empty"),
                          "no slashing-protection records in")


def _document(genesis_hash: bytes, **changes):
    doc = {"metadata": {"interchange_format_version": "5", "genesis_validators_root": "0x" + genesis_hash.hex()},
           "data": [{"pubkey": ADDRESS, "signed_blocks": [{"slot": "9", "signing_root": "0x" + root(9).hex()}],
                     "signed_attestations": [{"source_epoch": "3", "target_epoch": "4"}]}]}
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return json.dumps(doc).encode()


BAD = {
    "not JSON": (lambda g: b"{nope", "not valid JSON"),
    "too deep": (lambda g: b"[" * 100 + b"]" * 100, "nests deeper than 6 levels"),
    "too large": (lambda g: b" " * (MAX_INTERCHANGE_BYTES + 1), f"larger than {MAX_INTERCHANGE_BYTES} bytes"),
    "not an object": (lambda g: b"[]", "$: not an object"),
    "version 4": (lambda g: _document(g, metadata__interchange_format_version="4"), "'4' is not supported"),
    "version as a number": (lambda g: _document(g, metadata__interchange_format_version=5), "5 is not supported"),
    "bad root": (lambda g: _document(g, metadata__genesis_validators_root="0x12"),
                 "metadata.genesis_validators_root: not 0x and 64 hex digits"),
    "no data": (lambda g: json.dumps({"metadata": json.loads(_document(g))["metadata"]}).encode(), "$.data: missing"),
    "a BLS pubkey": (lambda g: _document(g, data__0__pubkey="0x" + "ab" * 48), "data[0].pubkey (a validator address)"),
    "slot as a number": (lambda g: _document(g, data__0__signed_blocks__0__slot=9),
                         "data[0].signed_blocks[0].slot: not a uint64 as a decimal string"),
    "slot in hex": (lambda g: _document(g, data__0__signed_blocks__0__slot="0x9"), "signed_blocks[0].slot"),
    "negative slot": (lambda g: _document(g, data__0__signed_blocks__0__slot="-1"), "signed_blocks[0].slot"),
    "slot past uint64": (lambda g: _document(g, data__0__signed_blocks__0__slot=str(2**64)), "signed_blocks[0].slot"),
    "bad signing root": (lambda g: _document(g, data__0__signed_blocks__0__signing_root="0xzz"),
                         "signed_blocks[0].signing_root"),
    "no target": (lambda g: _document(g, data__0__signed_attestations__0={"source_epoch": "3"}),
                  "data[0].signed_attestations[0].target_epoch: missing"),
    "source after target": (lambda g: _document(g, data__0__signed_attestations__0={"source_epoch": "5",
                                                                                     "target_epoch": "4"}),
                            "source_epoch 5 is after target_epoch 4"),
    "another chain": (lambda g: _document(keccak(b"another chain")), "is of the chain with genesis 0x"),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_interchange_file_is_one_clear_error_and_changes_nothing(chain_of_two, tmp_path, name):
    first, _, genesis_hash = chain_of_two
    make, words = BAD[name]
    bad = tmp_path / "bad.json"
    bad.write_bytes(make(genesis_hash))
    record = protection_path(first, KEYPAIR.address)
    before = record.read_bytes()
    assert_one_line_error(run("validator", "slashing-protection", "import", "--datadir", first, "--input", bad), words)
    assert record.read_bytes() == before


def test_import_is_refused_while_the_record_is_in_use_or_without_a_chain(chain_of_two, tmp_path):
    first, _, genesis_hash = chain_of_two
    good = tmp_path / "good.json"
    good.write_bytes(_document(genesis_hash))
    with SlashingProtection.open(first, KEYPAIR.address, genesis_hash):  # a node running with the key
        assert_one_line_error(run("validator", "slashing-protection", "import", "--datadir", first, "--input", good),
                              "in use by another process")
    assert_one_line_error(run("validator", "slashing-protection", "import", "--datadir", tmp_path / "none",
                              "--input", good), "holds no chain", "ogpu-node init")
    assert_one_line_error(run("validator", "slashing-protection", "import", "--datadir", first,
                              "--input", tmp_path / "missing.json"), "cannot read")


def test_run_refuses_a_record_of_another_chain_before_signing_anything(chain_of_two, tmp_path):
    first, _, _ = chain_of_two
    keystore, password = tmp_path / "keystore", tmp_path / "password"
    create_account(keystore, "pw", KEYPAIR.private_key, kdf_iterations=LIGHT_SCRYPT_N)
    password.write_text("pw\n")
    other = keccak(b"another chain")
    record = protection_path(first, KEYPAIR.address)
    record.unlink()
    SlashingProtection.open(first, KEYPAIR.address, other).close()
    assert_one_line_error(run("run", "--datadir", first, "--keystore", keystore, "--password-file", password,
                              "--http.port", 0, "--no-ws"),
                          f"is the record of the chain with genesis 0x{other.hex()}, not this chain's")
