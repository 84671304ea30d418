"""Shamir t-of-n sharing over GF(2**521 - 1)."""

from __future__ import annotations

import random
import secrets

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.exceptions import ConfigError
from securefed.secagg import PRIME, DropoutError, ProtocolError, combine, split
from securefed.secagg.shamir import _lagrange_at

SECRET = bytes(range(1, 33))


@st.composite
def _case(draw):
    n = draw(st.integers(1, 10))
    t = draw(st.integers(1, n))
    ids = draw(st.lists(st.integers(1, 2**64 - 1), min_size=n, max_size=n, unique=True))
    subset = draw(st.permutations(ids))[: draw(st.integers(t, n))]
    return draw(st.binary(min_size=32, max_size=32)), t, ids, subset, draw(st.integers(0, 2**32))


@given(_case())
@settings(max_examples=60, deadline=None)
def test_any_t_or_more_shares_reconstruct(case):
    secret, t, ids, subset, seed = case
    shares = split(secret, t, ids, random.Random(seed))
    assert sorted(shares) == sorted(ids)
    assert all(0 <= y < PRIME for y in shares.values())
    assert combine({i: shares[i] for i in subset}, t) == secret


@given(_case())
@settings(max_examples=40, deadline=None)
def test_fewer_than_t_shares_is_a_dropout_error(case):
    secret, t, ids, _, seed = case
    shares = split(secret, t, ids, random.Random(seed))
    with pytest.raises(DropoutError, match=f"t={t}"):
        combine(dict(list(shares.items())[: t - 1]), t)


@given(_case(), st.binary(min_size=32, max_size=32))
@settings(max_examples=40, deadline=None)
def test_t_minus_one_shares_fit_every_secret(case, other):
    # Any t-1 shares of `secret` are also t-1 shares of a valid sharing of `other`:
    # the polynomial through (0, other) and those t-1 points completes it.
    secret, t, ids, _, seed = case
    shares = split(secret, t, ids, random.Random(seed))
    seen = sorted(shares.items())[: t - 1]
    basis = [(0, int.from_bytes(other, "big")), *seen]
    forged = {x: _lagrange_at(basis, x) for x in ids}
    assert all(forged[x] == y for x, y in seen)
    assert combine(forged, t) == other


def test_production_randomness_and_numpy_generator():
    ids = [5, 9, 11, 20]
    a, b = split(SECRET, 3, ids), split(SECRET, 3, ids)
    assert a != b  # fresh coefficients from `secrets`
    assert combine(a, 3) == combine(b, 3) == SECRET
    g1 = split(SECRET, 3, ids, np.random.default_rng(7))
    assert g1 == split(SECRET, 3, ids, np.random.default_rng(7))
    assert combine({i: g1[i] for i in (9, 11, 20)}, 3) == SECRET


def test_t_equals_one_is_the_secret_itself():
    shares = split(SECRET, 1, [3, 4])
    assert set(shares.values()) == {int.from_bytes(SECRET, "big")}


def test_extra_inconsistent_share_detected():
    shares = split(SECRET, 2, [1, 2, 3])
    shares[3] = (shares[3] + 1) % PRIME
    with pytest.raises(ProtocolError, match="id 3 is inconsistent"):
        combine(shares, 2)


def test_wrong_shares_exceeding_256_bits_detected():
    shares = split(SECRET, 2, [1, 2])
    shares[2] = (shares[2] + secrets.randbelow(PRIME - 1) + 1) % PRIME
    with pytest.raises(ProtocolError, match="256 bits"):
        # Overwhelmingly likely: a random f(0) in GF(p) is >= 2**256.
        combine(shares, 2)


@pytest.mark.parametrize(
    ("secret", "t", "ids", "match"),
    [
        (SECRET, 2, [1, 1, 2], "distinct"),
        (SECRET, 2, [0, 1, 2], "non-zero"),
        (SECRET, 2, [-1, 1, 2], "non-zero"),
        (SECRET, 2, [PRIME, 1, 2], "non-zero"),
        (SECRET, 2, [True, 2, 3], "ints"),
        (SECRET, 2, [1.0, 2, 3], "ints"),
        (SECRET, 0, [1, 2, 3], "t must"),
        (SECRET, 4, [1, 2, 3], "t must"),
        (SECRET[:31], 2, [1, 2, 3], "32 bytes"),
        ("x" * 32, 2, [1, 2, 3], "32 bytes"),
    ],
)
def test_split_rejects_bad_arguments(secret, t, ids, match):
    with pytest.raises(ConfigError, match=match):
        split(secret, t, ids)


@pytest.mark.parametrize(
    "shares",
    [{0: 1, 1: 2}, {-5: 1, 1: 2}, {1: -1, 2: 2}, {1: PRIME, 2: 2}, {1: 1.0, 2: 2}, {"1": 1, 2: 2}],
)
def test_combine_rejects_malformed_shares(shares):
    with pytest.raises(ProtocolError):
        combine(shares, 2)


def test_combine_rejects_bad_threshold_and_rng():
    with pytest.raises(ConfigError, match="t must"):
        combine({1: 1}, 0)
    with pytest.raises(TypeError, match="rng"):
        split(SECRET, 2, [1, 2], rng=object())  # type: ignore[arg-type]
