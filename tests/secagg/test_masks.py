"""Mask expansion: ChaCha20 from the full seed, uniformity, determinism, cancellation."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.exceptions import ConfigError
from securefed.secagg import (
    MASK_NONCE,
    add_mod,
    build_graph,
    expand_mask,
    neg_mod,
    pairwise_mask,
    pairwise_sign,
    sum_mod,
)

SEED = bytes(range(32))
seeds = st.binary(min_size=32, max_size=32)


def test_golden_words_pin_the_derivation():
    # Frozen output: a change of nonce, word order or endianness breaks old peers.
    assert expand_mask(SEED, 4, 64).tolist() == [
        15861987636165253621,
        7323300214758900998,
        16291025506628222277,
        12738706186296812284,
    ]


def test_equals_raw_chacha20_keystream_words():
    raw = Cipher(algorithms.ChaCha20(SEED, MASK_NONCE), mode=None).encryptor().update(bytes(8000))
    words = np.frombuffer(raw, dtype="<u8")
    assert np.array_equal(expand_mask(SEED, 1000, 64), words)
    assert np.array_equal(expand_mask(SEED, 1000, 20), words & np.uint64(2**20 - 1))


@given(seed=seeds, length=st.integers(0, 300), bits=st.integers(1, 64))
@settings(max_examples=50, deadline=None)
def test_deterministic_in_range_and_prefix_stable(seed, length, bits):
    a = expand_mask(seed, length, bits)
    assert a.dtype == np.uint64
    assert a.shape == (length,)
    assert np.array_equal(a, expand_mask(seed, length, bits))
    if bits < 64 and length:
        assert int(a.max()) < 2**bits
    assert np.array_equal(a, expand_mask(seed, length + 7, bits)[:length])


@given(s1=seeds, s2=seeds)
@settings(max_examples=30, deadline=None)
def test_different_seeds_differ(s1, s2):
    if s1 != s2:
        assert not np.array_equal(expand_mask(s1, 64, 32), expand_mask(s2, 64, 32))


def test_every_seed_byte_matters():
    # The full 256-bit seed is used: flipping any one bit changes the mask.
    base = expand_mask(SEED, 8, 64)
    for i in range(32):
        flipped = bytearray(SEED)
        flipped[i] ^= 0x80
        assert not np.array_equal(expand_mask(bytes(flipped), 8, 64), base)


@pytest.mark.parametrize("bits", [8, 13, 62])
def test_low_byte_chi_square_uniform(bits):
    counts = np.bincount(
        (expand_mask(SEED, 2**16, bits) & np.uint64(0xFF)).astype(np.int64), minlength=256
    )
    expected = 2**16 / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # df = 255: mean 255, sd sqrt(510) ~ 22.6; 6 sd either side.
    assert 255 - 6 * 22.6 < chi2 < 255 + 6 * 22.6


def test_top_bit_balanced():
    top = expand_mask(SEED, 2**16, 62) >> np.uint64(61)
    assert abs(float(top.mean()) - 0.5) < 6 * 0.5 / np.sqrt(2**16)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((b"short", 4, 8), "32 bytes"),
        ((bytes(33), 4, 8), "32 bytes"),
        (("x" * 32, 4, 8), "32 bytes"),
        ((SEED, -1, 8), "length"),
        ((SEED, 2.0, 8), "length"),
        ((SEED, 4, 0), "bits"),
        ((SEED, 4, 65), "bits"),
        ((SEED, 4, True), "bits"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ConfigError, match=match):
        expand_mask(*args)


def test_pairwise_signs():
    assert pairwise_sign(1, 2) == 1
    assert pairwise_sign(2, 1) == -1
    with pytest.raises(ConfigError, match="itself"):
        pairwise_sign(3, 3)
    for bad in (0, 2, True):
        with pytest.raises(ConfigError, match="sign"):
            pairwise_mask(SEED, 4, 8, bad)


@st.composite
def _graph_case(draw):
    n = draw(st.integers(2, 8))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    keys = {e: draw(seeds) for e in edges}
    return n, keys, draw(st.integers(1, 40)), draw(st.integers(1, 64))


@given(_graph_case())
@settings(max_examples=50, deadline=None)
def test_pairwise_masks_cancel_over_any_graph(case):
    n, keys, length, bits = case
    per_client = []
    for u in range(n):
        total = np.zeros(length, np.uint64)
        for (i, j), key in keys.items():
            if u in (i, j):
                peer = j if u == i else i
                mask = pairwise_mask(key, length, bits, pairwise_sign(u, peer))
                total = add_mod(total, mask, bits)
        per_client.append(total)
    assert not sum_mod(per_client, bits).any()


@given(seed=seeds, n=st.integers(2, 30), bits=st.integers(1, 64))
@settings(max_examples=25, deadline=None)
def test_masked_inputs_sum_to_plain_sum_over_secagg_graph(seed, n, bits):
    graph = build_graph(list(range(1, n + 1)), seed)
    rng = np.random.default_rng(0)
    xs = {
        u: rng.integers(0, 2 ** min(bits, 32), size=10, dtype=np.uint64) for u in graph.client_ids
    }
    masked = []
    for u in graph.client_ids:
        y = xs[u]
        for v in graph[u]:
            key = bytes(
                a ^ b
                for a, b in zip(seed, min(u, v).to_bytes(16) + max(u, v).to_bytes(16), strict=True)
            )
            y = add_mod(y, pairwise_mask(key, 10, bits, pairwise_sign(u, v)), bits)
        masked.append(y)
    assert np.array_equal(sum_mod(masked, bits), sum_mod(xs.values(), bits))


def test_modular_helpers():
    a = expand_mask(SEED, 100, 17)
    assert not add_mod(a, neg_mod(a, 17), 17).any()
    assert not add_mod(a, neg_mod(a, 64), 64).any()
    assert int(neg_mod(np.array([0], np.uint64), 17)[0]) == 0
    with pytest.raises(ConfigError, match="at least one"):
        sum_mod([], 8)
    with pytest.raises(ConfigError, match="shape"):
        sum_mod([np.zeros(2, np.uint64), np.zeros(3, np.uint64)], 8)
