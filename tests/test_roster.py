"""The roster and signing identities: what a deviating server cannot forge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefed.exceptions import ConfigError, SignatureError
from securefed.roster import (
    Identity,
    Roster,
    generate_roster,
    identity_from_node_config,
    load_identity,
    signing_message,
)


def test_generated_roster_round_trips_and_signatures_verify(tmp_path: Path) -> None:
    roster, paths = generate_roster(["site-a", "site-b"], tmp_path)
    assert Roster.load(tmp_path / "roster.json") == roster
    assert oct(os.stat(paths["site-a"]).st_mode & 0o777) == "0o600"
    ident = load_identity(paths["site-a"], "site-a", roster)
    sig = ident.sign("test/domain", 7, b"key", "x")
    roster.verify("site-a", sig, "test/domain", 7, b"key", "x")


def test_a_signature_binds_signer_domain_and_every_field(tmp_path: Path) -> None:
    roster, paths = generate_roster(["a", "b"], tmp_path)
    a = load_identity(paths["a"], "a", roster)
    sig = a.sign("secagg/advertise", 3, b"\x01" * 32)
    with pytest.raises(SignatureError, match="does not verify"):
        roster.verify("b", sig, "secagg/advertise", 3, b"\x01" * 32)  # another signer
    with pytest.raises(SignatureError):
        roster.verify("a", sig, "secagg/other", 3, b"\x01" * 32)  # another purpose
    with pytest.raises(SignatureError):
        roster.verify("a", sig, "secagg/advertise", 4, b"\x01" * 32)  # another round
    with pytest.raises(SignatureError, match="not in the roster"):
        roster.verify("server", sig, "secagg/advertise", 3, b"\x01" * 32)
    with pytest.raises(SignatureError, match="64 bytes"):
        roster.verify("a", sig[:-1], "secagg/advertise", 3, b"\x01" * 32)


def test_a_key_the_server_made_does_not_verify_as_a_member(tmp_path: Path) -> None:
    roster, _ = generate_roster(["a", "b"], tmp_path)
    forged = Identity("a", Ed25519PrivateKey.generate())  # the server's own key, named "a"
    with pytest.raises(SignatureError):
        roster.verify("a", forged.sign("d", 1), "d", 1)


def test_encoding_is_unambiguous() -> None:
    assert signing_message("d", "ab", "c") != signing_message("d", "a", "bc")
    assert signing_message("d", b"1") != signing_message("d", "1")
    assert signing_message("d", 1) != signing_message("d", b"\x01")
    with pytest.raises(ConfigError):
        signing_message("d", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        signing_message("d", -1)


def test_identity_must_match_the_roster(tmp_path: Path) -> None:
    roster, paths = generate_roster(["a", "b"], tmp_path)
    with pytest.raises(ConfigError, match="not the roster's key"):
        load_identity(paths["a"], "b", roster)
    with pytest.raises(ConfigError, match="not in the roster"):
        load_identity(paths["a"], "c", roster)


def test_bad_roster_files_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read roster"):
        Roster.load(bad)
    bad.write_text(json.dumps({"format": "other", "members": {}}))
    with pytest.raises(ConfigError, match="securefed-roster/v1"):
        Roster.load(bad)
    bad.write_text(json.dumps({"format": "securefed-roster/v1", "members": {"a": "zz"}}))
    with pytest.raises(ConfigError, match="not hex"):
        Roster.load(bad)
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(ConfigError, match="share one"):
        Roster({"a": key, "b": key})
    with pytest.raises(ConfigError, match="member name"):
        Roster({"a b": key})


def test_node_config_needs_all_three_keys(tmp_path: Path) -> None:
    roster, paths = generate_roster(["a"], tmp_path)
    assert identity_from_node_config({"partition-id": 0}) is None
    with pytest.raises(ConfigError, match="needs all"):
        identity_from_node_config({"securefed-roster": str(tmp_path / "roster.json")})
    ident, loaded = identity_from_node_config({
        "securefed-roster": str(tmp_path / "roster.json"),
        "securefed-identity": str(paths["a"]), "securefed-name": "a"})
    assert ident.name == "a" and loaded == roster
