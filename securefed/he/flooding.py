"""Noise flooding of CKKS decryptions: the decryption-noise bound and the flooding width.

Why
---
A CKKS decryption returns ``m + e``: the message plus the ciphertext's noise ``e``,
which depends on the secret key. Li and Micciancio (Eurocrypt 2021, "On the Security
of Homomorphic Encryption on Approximate Numbers", ePrint 2020/1533) recover the key
from a few such decryptions and their ciphertexts. The counter-measure is *noise
flooding*: add fresh noise much wider than ``e`` before any value leaves the key holder.

Decryption-noise bound (per slot, canonical embedding, value units)
-------------------------------------------------------------------
SEAL encrypts with the public key at the key level, then divides by the special prime
``p`` (modulus switching, rounding) and adds the encoded message. With ring degree
``N``, error deviation ``sigma = 3.2`` (SEAL) and a ternary secret of Hamming weight
``h <= N``, the high-probability bounds of Cheon, Kim, Kim and Song (ASIACRYPT 2017,
"Homomorphic Encryption for Arithmetic of Approximate Numbers", Lemmas 1 and 2) give,
for one fresh ciphertext,

    B_clean = 8 sqrt(2) sigma N + 6 sigma sqrt(N) + 16 sigma sqrt(h N)   (encryption)
    B_ms    = sqrt(N / 3) (3 + 8 sqrt(h))                              (division by p)
    B_enc   = sqrt(3 N)                           (rounding of the encoding, 6 sigma)
    B_fresh = B_clean / p + B_ms + B_enc

and a sum of ``n`` fresh ciphertexts decrypts with ``|error| <= n B_fresh / Delta`` per
slot, ``Delta = 2**global_scale_bits``. At ``N = 8192``: ``B_fresh ~ 2**15.2``; measured
(``tests/he/test_flooding.py``) the largest slot of a fresh encryption is ``~2**13.2``.

Flooding width
--------------
The authority releases ``y = m + mu + eta`` over ``L`` values, ``mu`` the decryption
noise (``||mu||_2 <= sqrt(L) n B_fresh / Delta``) and ``eta ~ N(0, s**2 I_L)``. A
simulator without the key releases ``m + eta``. The Rényi divergence of order 2 between
the two is ``exp(||mu||**2 / s**2)`` (Bai, Langlois, Lepoint, Stehlé and Steinfeld,
ASIACRYPT 2015, ePrint 2015/483), and it multiplies over the decryptions of one key.
With at most ``R`` decryptions per key (key rotation) and

    s = 2**(lambda / 2) * sqrt(R * L) * n * B_fresh / Delta

the product over a key's lifetime is at most ``exp(2**-lambda)``; by the probability
preservation of the Rényi divergence, a key-recovery attack that succeeds with
probability ``eps`` on the released values succeeds with at least ``eps**2 exp(-2**-lambda)``
on the simulation, which involves no decryption at all. This is the ``2**(lambda/2)``
flooding of Li, Micciancio, Schultz and Sorrell (CRYPTO 2022, "Securing Approximate
Homomorphic Encryption Using Differential Privacy", ePrint 2022/816), which OpenFHE
implements as ``NOISE_FLOODING_DECRYPT`` (statistical security ``s`` and a number of
adversarial queries; here ``R * L`` values). The noise is added to the decoded values,
which are what the adversary observes, from a ChaCha20 CSPRNG
(:class:`securefed.privacy.noise.SecureSource`); the float64 decoding keeps about 53
bits, far finer than ``s``.

Error of a released aggregate (per value, documented bound)
------------------------------------------------------------
``|y - sum| <= n B_fresh / Delta + TAIL * s + FFT * n * max_abs``, with
``TAIL = 8`` (a Gaussian exceeds it with probability ``1.2e-15`` per value) and
``FFT = log2(N) 2**-52`` (SEAL's double-precision encoder and decoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from securefed.exceptions import ConfigError
from securefed.he.keys import CKKSConfig
from securefed.privacy.noise import RandomSource, SecureSource

__all__ = [
    "MIN_FLOODING_BITS",
    "SEAL_ERROR_STD",
    "TAIL",
    "Flooding",
    "flood",
    "flooding_for",
    "fresh_noise_bound",
]

#: Smallest statistical security parameter accepted (the issue's floor).
MIN_FLOODING_BITS = 40
#: SEAL's error standard deviation (``seal::util::global_variables::noise_standard_deviation``).
SEAL_ERROR_STD = 3.2
#: Gaussian tail multiple in the documented error bound.
TAIL = 8.0


def fresh_noise_bound(config: CKKSConfig) -> float:
    """``B_fresh``: the per-slot decryption-noise bound of one fresh ciphertext, in
    ring units (multiply by ``2**-global_scale_bits`` for value units).

    See the module docstring (Cheon et al. 2017, Lemmas 1 and 2), with ``h = N``.
    """
    n = float(config.poly_modulus_degree)
    h = n
    s = SEAL_ERROR_STD
    clean = 8 * math.sqrt(2) * s * n + 6 * s * math.sqrt(n) + 16 * s * math.sqrt(h * n)
    special = 2.0 ** config.coeff_mod_bit_sizes[-1]
    mod_switch = math.sqrt(n / 3) * (3 + 8 * math.sqrt(h))
    encode = math.sqrt(3 * n)
    return clean / special + mod_switch + encode


@dataclass(frozen=True)
class Flooding:
    """The flooding of one decryption and its documented error bound.

    Attributes
    ----------
    sigma : float
        Standard deviation of the Gaussian added to every released value.
    noise_bound : float
        ``n B_fresh / Delta``: the CKKS decryption noise bound per value.
    error_bound : float
        The documented bound on ``|released - sum|`` per value (module docstring).
    security_bits : int
        ``lambda``.
    """

    sigma: float
    noise_bound: float
    error_bound: float
    security_bits: int


def flooding_for(config: CKKSConfig, *, terms: int, values: int, rotation_rounds: int,
                 security_bits: int = MIN_FLOODING_BITS, max_abs: float = 1.0) -> Flooding:
    """The flooding width for a sum of ``terms`` fresh ciphertexts of ``values`` values.

    Parameters
    ----------
    config : CKKSConfig
        Parameters of the key (``N``, special prime, scale).
    terms : int
        Fresh ciphertexts added into the decrypted one (``n``).
    values : int
        Values released by this decryption (``L``).
    rotation_rounds : int
        Decryptions allowed under one key (``R``); the authority enforces it.
    security_bits : int
        Statistical security parameter ``lambda``, at least :data:`MIN_FLOODING_BITS`.
    max_abs : float
        Bound on one contribution's values (for the double-precision term).

    Raises
    ------
    ConfigError
        ``security_bits`` below 40, or a non-positive count.
    """
    if isinstance(security_bits, bool) or not isinstance(security_bits, int) \
            or security_bits < MIN_FLOODING_BITS:
        raise ConfigError(f"flooding security_bits must be an integer >= {MIN_FLOODING_BITS}, "
                          f"got {security_bits!r}")
    for name, value in (("terms", terms), ("values", values),
                        ("rotation_rounds", rotation_rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    delta = 2.0 ** config.global_scale_bits
    noise = terms * fresh_noise_bound(config) / delta
    sigma = 2.0 ** (security_bits / 2) * math.sqrt(rotation_rounds * values) * noise
    fft = math.log2(config.poly_modulus_degree) * 2.0**-52 * terms * max(max_abs, 1.0)
    return Flooding(sigma=sigma, noise_bound=noise, error_bound=noise + TAIL * sigma + fft,
                    security_bits=security_bits)


def flood(values: npt.NDArray[np.float64], sigma: float,
          source: RandomSource | None = None) -> npt.NDArray[np.float64]:
    """``values + N(0, sigma**2)`` per value, from a CSPRNG unless a source is given.

    Parameters
    ----------
    values : numpy.ndarray
        The decrypted values.
    sigma : float
        Flooding standard deviation (:func:`flooding_for`), finite and > 0.
    source : RandomSource, optional
        Default :class:`~securefed.privacy.noise.SecureSource` (ChaCha20, fresh OS key);
        a seeded source is for tests only.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"flooding sigma must be finite and > 0, got {sigma!r}")
    noise = (source or SecureSource()).normal(int(values.size)) * sigma
    return np.asarray(values, dtype=np.float64) + noise.reshape(values.shape)
