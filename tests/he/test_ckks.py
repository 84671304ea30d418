"""Encrypt, add on the server, decrypt the aggregate; malformed input is refused."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from securefed.exceptions import ConfigError, PayloadError
from securefed.he import (
    CKKSConfig,
    Frame,
    add_ciphertexts,
    decrypt_sum,
    encrypt_vector,
    generate_keys,
    pack_frame,
    slot_count,
    unpack_frame,
)


def _round(keys, xs):
    cts = [encrypt_vector(keys.client_context, x) for x in xs]
    total = add_ciphertexts(keys.public_context, cts)
    return decrypt_sum(keys.secret_context, total, xs[0].size, min_terms=len(xs))


def test_five_clients_within_1e6(authority_keys):
    # default n=8192, [60, 40, 60], scale 2^84: unflooded error ~1e-15
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, 300) for _ in range(5)]
    got = _round(authority_keys, xs)
    assert got.dtype == np.float64 and got.shape == (300,)
    assert np.max(np.abs(got - np.sum(xs, axis=0))) < 1e-6


def test_longer_than_slot_count_round_trips(authority_keys):
    n = slot_count(authority_keys.public_context)
    assert n == 4096
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-1, 1, 2 * n + 5).astype(np.float32) for _ in range(2)]
    ct = encrypt_vector(authority_keys.client_context, xs[0])
    assert unpack_frame(ct).values == (n, n, 5)
    got = _round(authority_keys, xs)
    assert np.max(np.abs(got - (xs[0].astype(np.float64) + xs[1]))) < 1e-6


def test_multidimensional_input_is_flattened(authority_keys):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    got = _round(authority_keys, [x, x])
    assert np.max(np.abs(got - 2 * x.ravel())) < 1e-6


def test_one_data_prime_setting():
    keys = generate_keys(CKKSConfig(coeff_mod_bit_sizes=(60, 40), global_scale_bits=50))
    rng = np.random.default_rng(2)
    xs = [rng.uniform(-1, 1, 100) for _ in range(3)]
    assert np.max(np.abs(_round(keys, xs) - np.sum(xs, axis=0))) < 1e-6


def test_shared_role_round(shared_keys):
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, 50) for _ in range(3)]
    assert np.max(np.abs(_round(shared_keys, xs) - np.sum(xs, axis=0))) < 1e-6
    # every client could decrypt alone: that is why the role is weaker
    one = encrypt_vector(shared_keys.client_context, xs[0])
    got = decrypt_sum(shared_keys.client_context, one, 50, min_terms=1)
    assert np.max(np.abs(got - xs[0])) < 1e-6


def test_sums_of_sums_count_terms(authority_keys):
    x = np.full(8, 0.25)
    ct = encrypt_vector(authority_keys.client_context, x)
    pair = add_ciphertexts(authority_keys.public_context, [ct, ct])
    four = add_ciphertexts(authority_keys.public_context, [pair, pair])
    assert unpack_frame(four).terms == 4
    assert np.allclose(decrypt_sum(authority_keys.secret_context, four, 8, min_terms=4),
                       1.0, atol=1e-6)


def test_single_client_is_not_decrypted_by_default(authority_keys):
    ct = encrypt_vector(authority_keys.client_context, np.ones(4))
    with pytest.raises(PayloadError, match="min_terms"):
        decrypt_sum(authority_keys.secret_context, ct, 4)
    with pytest.raises(ConfigError):
        decrypt_sum(authority_keys.secret_context, ct, 4, min_terms=0)


def test_decrypt_refuses_public_context(authority_keys):
    ct = encrypt_vector(authority_keys.client_context, np.ones(4))
    total = add_ciphertexts(authority_keys.public_context, [ct, ct])
    with pytest.raises(ConfigError):
        decrypt_sum(authority_keys.public_context, total, 4)


def test_wrong_length_refused(authority_keys):
    ct = encrypt_vector(authority_keys.client_context, np.ones(4))
    total = add_ciphertexts(authority_keys.public_context, [ct, ct])
    with pytest.raises(PayloadError, match="expected 5"):
        decrypt_sum(authority_keys.secret_context, total, 5)


def test_mismatched_layouts_refused(authority_keys):
    a = encrypt_vector(authority_keys.client_context, np.ones(4))
    b = encrypt_vector(authority_keys.client_context, np.ones(5))
    c = encrypt_vector(authority_keys.client_context, np.ones(4097))  # two chunks
    for other in (b, c):
        with pytest.raises(PayloadError, match="cannot be added"):
            add_ciphertexts(authority_keys.public_context, [a, other])
    with pytest.raises(PayloadError):
        add_ciphertexts(authority_keys.public_context, [])
    with pytest.raises(PayloadError):
        add_ciphertexts(authority_keys.public_context, a)  # bytes, not a list


def test_other_parameters_refused(authority_keys):
    other = generate_keys(CKKSConfig(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 20, 40),
                                     global_scale_bits=20))
    a = encrypt_vector(authority_keys.client_context, np.ones(4))
    b = encrypt_vector(other.client_context, np.ones(4))
    with pytest.raises(PayloadError):
        add_ciphertexts(authority_keys.public_context, [a, b])


@pytest.mark.parametrize("bad", [np.array([]), np.array([1.0, np.nan]),
                                 np.array([np.inf]), np.array(["a"]),
                                 np.array([1e30])])
def test_bad_plaintext_refused(authority_keys, bad):
    with pytest.raises(PayloadError):
        encrypt_vector(authority_keys.client_context, bad)


def test_truncated_and_padded_refused(authority_keys):
    ct = encrypt_vector(authority_keys.client_context, np.ones(16))
    for bad in (b"", ct[:5], ct[:30], ct[:-1], ct[: len(ct) // 2], ct + b"\0"):
        with pytest.raises(PayloadError):
            add_ciphertexts(authority_keys.public_context, [ct, bad])
        with pytest.raises(PayloadError):
            decrypt_sum(authority_keys.secret_context, bad, 16, min_terms=1)


def test_forged_headers_refused(authority_keys):
    ct = encrypt_vector(authority_keys.client_context, np.ones(16))
    frame = unpack_frame(ct)
    forged = [
        b"XXXX" + ct[4:],                                       # magic
        ct[:4] + b"\x02" + ct[5:],                              # version
        ct[:5] + struct.pack("<I", 0) + ct[9:],                 # zero terms
        ct[:9] + struct.pack("<I", 0) + ct[13:],                # zero chunks
        ct[:9] + struct.pack("<I", 2**32 - 1) + ct[13:],        # absurd chunk count
        pack_frame(Frame(1, (17,), frame.chunks)),              # wrong declared length
        pack_frame(Frame(1, (16,), (b"\x00" * 64,))),           # junk ciphertext
        pack_frame(Frame(1, (16,), (frame.chunks[0][:-8],))),   # truncated chunk
    ]
    for bad in forged:
        with pytest.raises(PayloadError):
            add_ciphertexts(authority_keys.public_context, [ct, bad])
    with pytest.raises(PayloadError):
        unpack_frame("text")  # type: ignore[arg-type]


def test_tampered_bytes_never_crash(authority_keys):
    """Random byte changes: a PayloadError at parse time, or (CKKS is malleable, with
    no integrity check) garbage that ``max_abs`` refuses; never a crash or a quiet
    wrong sum."""
    x = np.full(16, 0.5)
    ct = encrypt_vector(authority_keys.client_context, x)
    rng = random.Random(0)
    for _ in range(40):
        b = bytearray(ct)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if bytes(b) == ct:
            continue
        with pytest.raises(PayloadError):
            _add_then_decrypt(authority_keys, bytes(b), ct)


def _add_then_decrypt(keys, *cts):
    total = add_ciphertexts(keys.public_context, list(cts))
    return decrypt_sum(keys.secret_context, total, 16, max_abs=100.0)


@pytest.mark.parametrize("cfg", [CKKSConfig(coeff_mod_bit_sizes=(60, 40), global_scale_bits=40),
                                 CKKSConfig()], ids=["60-40-scale40", "default"])
def test_max_abs_aggregate_is_the_wrap_point(cfg):
    """Below ``max_abs_aggregate`` the sum decodes; just above it wraps around the data
    modulus (CKKS cannot notice), so callers must keep clients × bound below it."""
    assert CKKSConfig(coeff_mod_bit_sizes=(60, 40), global_scale_bits=40
                      ).max_abs_aggregate == 2.0**19
    assert CKKSConfig().max_abs_aggregate == 2.0**15  # (60, 40, 60) at scale 2^84
    assert CKKSConfig(coeff_mod_bit_sizes=(60, 40, 60),
                      global_scale_bits=40).max_abs_aggregate == 2.0**59
    keys = generate_keys(cfg)
    for factor, correct in ((0.95, True), (1.05, False)):
        v = factor * cfg.max_abs_aggregate / 4
        ct = encrypt_vector(keys.client_context, np.full(8, v))
        total = add_ciphertexts(keys.public_context, [ct] * 4)
        got = decrypt_sum(keys.secret_context, total, 8, min_terms=4)
        assert np.allclose(got, 4 * v, rtol=1e-9) is correct
