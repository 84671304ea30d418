"""Shamir t-of-n secret sharing of 32-byte secrets over the Mersenne prime field 2**521 - 1.

Secure aggregation lets the server remove the masks of dropped clients (pairwise keys)
and of surviving clients (self-mask seeds) by reconstructing them from shares held by
the survivors (Bonawitz et al. 2017, CCS, "Practical Secure Aggregation"; Bell et al.
2020, arXiv:2009.05807, where shares go only to a client's graph neighbours).

A secret ``s`` (a 32-byte string read as a big-endian integer ``< 2**256``) is the
constant term of a random polynomial ``f`` of degree ``t - 1`` over ``GF(p)`` with
``p = 2**521 - 1`` (a Mersenne prime above ``2**256``). The share of client ``i`` is
``f(i)``: the x-coordinate is the client id itself, so ids must be distinct and non-zero
modulo ``p``. Any ``t`` shares give ``s = f(0)`` by Lagrange interpolation; any
``t - 1`` shares are uniformly distributed whatever ``s`` is, so they reveal nothing.

Randomness
----------
Production calls pass ``rng=None``: the coefficients come from :func:`secrets.randbelow`
(the operating system's CSPRNG) and no seed is accepted. Tests may inject a
:class:`random.Random` (anything with ``randrange``) or a :class:`numpy.random.Generator`
to make sharings reproducible; such an ``rng`` must never be used in deployment.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from securefed.exceptions import ConfigError
from securefed.secagg.errors import DropoutError, ProtocolError

__all__ = ["PRIME", "SECRET_BYTES", "combine", "split"]

PRIME = 2**521 - 1
"""The field modulus: the Mersenne prime ``2**521 - 1``."""

SECRET_BYTES = 32
"""Length of a shared secret (a 256-bit key or seed)."""

_PRIME_BYTES = (PRIME.bit_length() + 7) // 8


class _RandRange(Protocol):
    def randrange(self, stop: int, /) -> int: ...


def _rand_below(bound: int, rng: _RandRange | np.random.Generator | None) -> int:
    """A uniform integer in ``[0, bound)``."""
    if rng is None:
        return secrets.randbelow(bound)
    if isinstance(rng, np.random.Generator):
        nbits = bound.bit_length()
        while True:  # rejection sampling: exact uniformity, < 2 draws on average
            value = int.from_bytes(rng.bytes((nbits + 7) // 8), "big") >> (-nbits % 8)
            if value < bound:
                return value
    if hasattr(rng, "randrange"):
        return int(rng.randrange(bound))
    raise TypeError(
        "rng must be None (production), a random.Random-like object or a "
        f"numpy.random.Generator, got {type(rng).__name__}"
    )


def _check_id(i: object, what: str) -> int:
    if isinstance(i, bool) or not isinstance(i, int | np.integer):
        raise ConfigError(f"{what} must be ints, got {i!r}")
    value = int(i)
    if not 1 <= value < PRIME:
        raise ConfigError(f"{what} must be in [1, 2**521 - 2] (non-zero x-coordinates), got {i}")
    return value


def split(
    secret: bytes,
    t: int,
    n_ids: Sequence[int],
    rng: _RandRange | np.random.Generator | random.Random | None = None,
) -> dict[int, int]:
    """Split ``secret`` into shares, one per id, any ``t`` of which reconstruct it.

    Parameters
    ----------
    secret : bytes
        Exactly 32 bytes.
    t : int
        Threshold, ``1 <= t <= len(n_ids)``.
    n_ids : sequence of int
        Distinct, non-zero client ids; they are the shares' x-coordinates.
    rng : None, random.Random-like or numpy.random.Generator
        ``None`` (production) draws coefficients with :func:`secrets.randbelow`. Other
        values are for reproducible tests only.

    Returns
    -------
    dict[int, int]
        ``{id: f(id)}`` with ``f(0)`` the secret (Bonawitz et al. 2017; Bell et al.
        2020, arXiv:2009.05807).

    Raises
    ------
    ConfigError
        If the secret is not 32 bytes, ``t`` is out of range, or an id is zero,
        negative, not an int, or repeated.
    """
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
        got = f"{len(secret)} bytes" if isinstance(secret, bytes | bytearray) else repr(secret)
        raise ConfigError(f"secret must be {SECRET_BYTES} bytes, got {got}")
    ids = [_check_id(i, "share ids") for i in n_ids]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"share ids must be distinct, repeated: {dupes}")
    if isinstance(t, bool) or not isinstance(t, int | np.integer) or not 1 <= t <= len(ids):
        raise ConfigError(f"t must be an int in [1, n={len(ids)}], got {t!r}")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [_rand_below(PRIME, rng) for _ in range(int(t) - 1)]
    shares: dict[int, int] = {}
    for x in ids:
        acc = 0
        for a in reversed(coeffs):  # Horner
            acc = (acc * x + a) % PRIME
        shares[x] = acc
    return shares


def _lagrange_at(points: Sequence[tuple[int, int]], x0: int) -> int:
    """Value at ``x0`` of the polynomial through ``points`` (distinct x), over GF(p)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (x0 - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: Mapping[int, int], t: int) -> bytes:
    """Reconstruct the 32-byte secret from at least ``t`` shares.

    The secret is ``f(0)`` interpolated through ``t`` of the shares (smallest ids
    first). Any further shares are checked to lie on the same polynomial, so a corrupt
    or forged share among more than ``t`` is detected rather than silently used.

    Parameters
    ----------
    shares : mapping of int to int
        ``{id: share}`` as produced by :func:`split`.
    t : int
        The threshold used when splitting.

    Returns
    -------
    bytes
        The 32-byte secret (Bonawitz et al. 2017; Bell et al. 2020, arXiv:2009.05807).

    Raises
    ------
    DropoutError
        If fewer than ``t`` shares are given.
    ProtocolError
        If an id or share is malformed, the extra shares disagree, or the result is not
        a 32-byte value (a sign of wrong shares).
    ConfigError
        If ``t < 1``.
    """
    if isinstance(t, bool) or not isinstance(t, int | np.integer) or t < 1:
        raise ConfigError(f"t must be an int >= 1, got {t!r}")
    t = int(t)
    if len(shares) < t:
        raise DropoutError(f"need at least t={t} shares to reconstruct, got {len(shares)}")
    points: list[tuple[int, int]] = []
    for i, y in shares.items():
        try:
            x = _check_id(i, "share ids")
        except ConfigError as exc:
            raise ProtocolError(str(exc)) from None
        if isinstance(y, bool) or not isinstance(y, int | np.integer) or not 0 <= int(y) < PRIME:
            raise ProtocolError(f"share of id {x} must be an int in [0, 2**521 - 1), got {y!r}")
        points.append((x, int(y)))
    points.sort()
    basis, extra = points[:t], points[t:]
    for x, y in extra:
        if _lagrange_at(basis, x) != y:
            raise ProtocolError(f"share of id {x} is inconsistent with the other shares")
    value = _lagrange_at(basis, 0)
    if value >= 2 ** (8 * SECRET_BYTES):
        raise ProtocolError("reconstructed value exceeds 256 bits: the shares are wrong")
    return value.to_bytes(SECRET_BYTES, "big")
