"""X25519 + HKDF key agreement and AES-256-GCM share bundles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.exceptions import ConfigError
from securefed.secagg import (
    KEY_LABELS,
    PAIRWISE_MASK_LABEL,
    SHARE_ENCRYPTION_LABEL,
    DecryptionError,
    ProtocolError,
    associated_data,
    decrypt_bundle,
    derive_shared_key,
    encrypt_bundle,
    generate_keypair,
    load_public_key,
)

AD = {"sender": 3, "receiver": 7, "round_id": 2, "stage": "share_keys"}


@pytest.fixture(scope="module")
def pair():
    return generate_keypair(), generate_keypair()


@pytest.mark.parametrize("label", KEY_LABELS)
def test_both_sides_derive_the_same_key(pair, label):
    a, b = pair
    k_ab = derive_shared_key(a.private_key, b.public_bytes, label, context=b"round-1")
    k_ba = derive_shared_key(b.private_key, a.public_bytes, label, context=b"round-1")
    assert k_ab == k_ba
    assert len(k_ab) == 32


def test_labels_and_contexts_separate_keys(pair):
    a, b = pair
    keys = {
        derive_shared_key(a.private_key, b.public_bytes, PAIRWISE_MASK_LABEL),
        derive_shared_key(a.private_key, b.public_bytes, SHARE_ENCRYPTION_LABEL),
        derive_shared_key(a.private_key, b.public_bytes, PAIRWISE_MASK_LABEL, context=b"r2"),
        derive_shared_key(a.private_key, generate_keypair().public_bytes, PAIRWISE_MASK_LABEL),
    }
    assert len(keys) == 4


def test_keypair_repr_hides_private_key(pair):
    assert "private" not in repr(pair[0])
    assert len(pair[0].public_bytes) == 32


def test_bad_label_context_and_peer_keys(pair):
    a, b = pair
    with pytest.raises(ConfigError, match="label"):
        derive_shared_key(a.private_key, b.public_bytes, "self-mask")
    with pytest.raises(ConfigError, match="context"):
        derive_shared_key(a.private_key, b.public_bytes, PAIRWISE_MASK_LABEL, context="r")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="32 bytes"):
        derive_shared_key(a.private_key, b.public_bytes[:31], PAIRWISE_MASK_LABEL)
    with pytest.raises(ProtocolError, match="32 bytes"):
        load_public_key("x" * 32)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="key agreement"):  # low-order point
        derive_shared_key(a.private_key, bytes(32), PAIRWISE_MASK_LABEL)


def test_round_trip_and_fresh_nonces():
    key = bytes(range(32))
    c1 = encrypt_bundle(key, b"shares", **AD)
    c2 = encrypt_bundle(key, b"shares", **AD)
    assert c1 != c2
    assert decrypt_bundle(key, c1, **AD) == decrypt_bundle(key, c2, **AD) == b"shares"
    assert decrypt_bundle(key, encrypt_bundle(key, b"", **AD), **AD) == b""


@given(data=st.binary(max_size=64), pos=st.integers(0, 10_000), flip=st.integers(1, 255))
@settings(max_examples=60, deadline=None)
def test_any_tampered_byte_is_rejected(data, pos, flip):
    key = bytes(32)
    blob = bytearray(encrypt_bundle(key, data, **AD))
    blob[pos % len(blob)] ^= flip
    with pytest.raises(DecryptionError):
        decrypt_bundle(key, bytes(blob), **AD)


@pytest.mark.parametrize(
    "change",
    [{"sender": 4}, {"receiver": 3}, {"round_id": 3}, {"stage": "unmask"}],
)
def test_wrong_associated_data_is_rejected(change):
    key = bytes(32)
    blob = encrypt_bundle(key, b"shares", **AD)
    with pytest.raises(DecryptionError, match="failed authentication"):
        decrypt_bundle(key, blob, **{**AD, **change})


def test_wrong_key_and_truncation_rejected():
    blob = encrypt_bundle(bytes(32), b"shares", **AD)
    with pytest.raises(DecryptionError):
        decrypt_bundle(bytes(31) + b"\x01", blob, **AD)
    with pytest.raises(DecryptionError, match="too short"):
        decrypt_bundle(bytes(32), blob[:27], **AD)
    with pytest.raises(DecryptionError, match="too short"):
        decrypt_bundle(bytes(32), "x" * 40, **AD)  # type: ignore[arg-type]


def test_associated_data_is_injective_and_validated():
    assert associated_data(**AD) != associated_data(**{**AD, "sender": 7, "receiver": 3})
    assert associated_data(**{**AD, "stage": "ab"}) != associated_data(**{**AD, "stage": "a"})
    for bad in ({"sender": -1}, {"receiver": 2**64}, {"round_id": True}, {"stage": ""}):
        with pytest.raises(ConfigError):
            associated_data(**{**AD, **bad})
    with pytest.raises(ConfigError, match="AES-256"):
        encrypt_bundle(bytes(16), b"x", **AD)
    with pytest.raises(ConfigError, match="plaintext"):
        encrypt_bundle(bytes(32), "x", **AD)  # type: ignore[arg-type]
