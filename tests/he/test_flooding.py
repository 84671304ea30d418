"""Noise flooding: the decryption-noise bound holds, the flooding is present and sized
for its security parameter, and the aggregate stays within the documented error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from securefed.exceptions import ConfigError
from securefed.he import (
    CKKSConfig,
    add_ciphertexts,
    decrypt_sum,
    encrypt_vector,
    flood,
    flooding_for,
    fresh_noise_bound,
)
from securefed.privacy.noise import SeededSource


def test_fresh_noise_bound_of_the_default_parameters():
    bound = fresh_noise_bound(CKKSConfig())
    assert 2**15 < bound < 2**15.5  # dominated by the modulus switch, sqrt(N/3)(3 + 8 sqrt(N))


@pytest.mark.parametrize("terms", [1, 4])
def test_measured_decryption_noise_is_within_the_bound(authority_keys, terms):
    """Raw CKKS noise of encryptions of zero (what flooding must hide) stays below
    ``terms * B_fresh / Delta``, with room: measured ~2**13.2 against ~2**15.2."""
    cfg = authority_keys.config
    zeros = np.zeros(cfg.slot_count)
    cts = [encrypt_vector(authority_keys.client_context, zeros) for _ in range(terms)]
    total = cts[0] if terms == 1 else add_ciphertexts(authority_keys.public_context, cts)
    raw = decrypt_sum(authority_keys.secret_context, total, zeros.size, min_terms=terms)
    delta = 2.0**cfg.global_scale_bits
    assert 0 < np.max(np.abs(raw)) < terms * fresh_noise_bound(cfg) / delta
    assert np.max(np.abs(raw)) * delta > 2**8  # the raw noise is really there, unflooded


def test_flooding_width_follows_the_renyi_bound():
    cfg = CKKSConfig()
    f = flooding_for(cfg, terms=10, values=1000, rotation_rounds=10, security_bits=40)
    noise = 10 * fresh_noise_bound(cfg) / 2.0**84
    assert f.noise_bound == pytest.approx(noise)
    assert f.sigma == pytest.approx(2.0**20 * math.sqrt(10 * 1000) * noise)
    # over the key's R decryptions, sum ||mu||^2 / sigma^2 <= 2^-lambda
    assert 10 * 1000 * noise**2 / f.sigma**2 == pytest.approx(2.0**-40)
    wider = flooding_for(cfg, terms=10, values=1000, rotation_rounds=10, security_bits=60)
    assert wider.sigma == pytest.approx(2.0**10 * f.sigma)


def test_default_parameters_keep_the_error_far_below_dp_and_float32():
    """10 clients, 100,001 values, keys rotated every 10 rounds, 40-bit flooding: the
    documented error per value stays below 1e-9 (float32 resolution of a weight near 1
    is 6e-8; DP noise is orders larger). The former (60, 40) at 2^50 could not: ~0.1."""
    f = flooding_for(CKKSConfig(), terms=10, values=100_001, rotation_rounds=10)
    assert f.error_bound < 1e-9
    old = flooding_for(CKKSConfig(coeff_mod_bit_sizes=(60, 40), global_scale_bits=50),
                       terms=10, values=100_001, rotation_rounds=10)
    assert old.sigma > 1e-2


@pytest.mark.parametrize("bits", [0, 39, 40.5, True])
def test_less_than_40_bits_is_refused(bits):
    with pytest.raises(ConfigError, match=">= 40"):
        flooding_for(CKKSConfig(), terms=2, values=10, rotation_rounds=1, security_bits=bits)


def test_flood_adds_gaussian_noise_of_the_given_width():
    x = np.zeros(20_000)
    y = flood(x, 1e-6, SeededSource(0))
    assert abs(np.std(y) / 1e-6 - 1) < 0.03 and abs(np.mean(y)) < 5e-8
    z = flood(x, 1e-6)  # production: CSPRNG
    assert abs(np.std(z) / 1e-6 - 1) < 0.03 and not np.array_equal(y, z)
    with pytest.raises(ConfigError):
        flood(x, 0.0)
