"""Mask expansion for secure aggregation: a 256-bit seed to a uniform vector in Z_{2^b}.

In secure aggregation every client hides its quantised input ``x_u`` as (Bonawitz et
al. 2017, CCS, "Practical Secure Aggregation"; Bell et al. 2020, arXiv:2009.05807)::

    y_u = x_u + PRG(b_u) + sum_{v in N(u), u < v} PRG(s_uv) - sum_{v in N(u), u > v} PRG(s_uv)

modulo ``2**bits``, where ``b_u`` is a private self-mask seed and ``s_uv`` the key
agreed with neighbour ``v``. The pairwise masks cancel in the sum over all clients; the
self masks are removed by the server after it reconstructs ``b_u`` from shares.

Here ``PRG`` is the ChaCha20 keystream of ``cryptography`` keyed with the **full**
256-bit seed (Flower's SecAgg+ instead seeds numpy's ``RandomState`` with a 32-bit fold
of the key). The nonce is a fixed domain-separation constant: every seed is a fresh,
single-use key derived by HKDF (:mod:`securefed.secagg.crypto`) or drawn at random, so a
fixed nonce never repeats a (key, nonce) pair across different seeds. Each 64-bit
little-endian keystream word gives one element; keeping its low ``bits`` bits is
uniform on ``Z_{2^bits}`` because ``2**bits`` divides ``2**64``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from securefed.exceptions import ConfigError
from securefed.secagg.crypto import PAIRWISE_MASK_LABEL, derive_shared_key

__all__ = [
    "MASK_NONCE",
    "SEED_BYTES",
    "add_mod",
    "expand_mask",
    "neg_mod",
    "pairwise_mask",
    "pairwise_mask_between",
    "pairwise_sign",
    "sum_mod",
]

SEED_BYTES = 32
"""Length of a mask seed: a 256-bit ChaCha20 key."""

MASK_NONCE = (0).to_bytes(4, "little") + b"sfed-mask-v1"
"""ChaCha20 nonce of ``cryptography``: 4-byte little-endian block counter (starts at 0)
followed by a 12-byte domain-separation label."""

_MAX_BITS = 64
_MAX_LENGTH = 2**32 * 8  # ChaCha20 blocks of 64 bytes before the 32-bit counter wraps


def _check_bits(bits: int) -> int:
    if (
        isinstance(bits, bool)
        or not isinstance(bits, int | np.integer)
        or not (1 <= bits <= _MAX_BITS)
    ):
        raise ConfigError(f"bits must be an int in [1, {_MAX_BITS}], got {bits!r}")
    return int(bits)


def _low_bits_mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def expand_mask(seed: bytes, length: int, bits: int) -> npt.NDArray[np.uint64]:
    """Expand a 256-bit seed into ``length`` elements uniform over ``Z_{2^bits}``.

    Parameters
    ----------
    seed : bytes
        Exactly 32 bytes; the full seed keys ChaCha20. Use each seed for one mask only.
    length : int
        Number of elements, ``>= 0``.
    bits : int
        Modulus exponent, ``1 <= bits <= 64``.

    Returns
    -------
    numpy.ndarray of uint64
        Deterministic in ``(seed, length, bits)``; a prefix of a longer expansion of the
        same seed (Bonawitz et al. 2017; Bell et al. 2020, arXiv:2009.05807).

    Raises
    ------
    ConfigError
        If the seed is not 32 bytes, or ``length`` or ``bits`` is out of range.
    """
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        got = f"{len(seed)} bytes" if isinstance(seed, bytes | bytearray) else type(seed).__name__
        raise ConfigError(f"seed must be {SEED_BYTES} bytes, got {got}")
    if (
        isinstance(length, bool)
        or not isinstance(length, int | np.integer)
        or not (0 <= length <= _MAX_LENGTH)
    ):
        raise ConfigError(f"length must be an int in [0, {_MAX_LENGTH}], got {length!r}")
    bits = _check_bits(bits)
    out = np.zeros(int(length), dtype=np.uint64)
    if out.size:
        view = out.data.cast("B")
        encryptor = Cipher(algorithms.ChaCha20(bytes(seed), MASK_NONCE), mode=None).encryptor()
        encryptor.update_into(view, view)  # keystream XOR zeros, written in place
        if not np.little_endian:  # pragma: no cover - words are little-endian everywhere
            out.byteswap(inplace=True)
        if bits < _MAX_BITS:
            np.bitwise_and(out, _low_bits_mask(bits), out=out)
    return out


def pairwise_sign(own_id: int, peer_id: int) -> int:
    """Sign of the pairwise mask ``own_id`` applies for ``peer_id``: +1 if lower id.

    Raises
    ------
    ConfigError
        If the ids are equal (a client has no pairwise mask with itself).
    """
    if own_id == peer_id:
        raise ConfigError(f"a client has no pairwise mask with itself (id {own_id})")
    return 1 if own_id < peer_id else -1


def pairwise_mask(shared_key: bytes, length: int, bits: int, sign: int) -> npt.NDArray[np.uint64]:
    """The pairwise mask ``+PRG(s_uv)`` or ``-PRG(s_uv) mod 2**bits``.

    Parameters
    ----------
    shared_key : bytes
        The 32-byte key both clients derived (``crypto.derive_shared_key`` with the
        ``"pairwise-mask"`` label).
    length, bits : int
        As in :func:`expand_mask`.
    sign : {+1, -1}
        :func:`pairwise_sign` of the client applying it; the two signs of a pair cancel.

    Returns
    -------
    numpy.ndarray of uint64
        The signed mask in ``[0, 2**bits)``.
    """
    if isinstance(sign, bool) or sign not in (1, -1):
        raise ConfigError(f"sign must be +1 or -1, got {sign!r}")
    mask = expand_mask(shared_key, length, bits)
    return mask if sign == 1 else neg_mod(mask, bits)


def pairwise_mask_between(
    own_id: int, peer_id: int, private_key: X25519PrivateKey, public_key: bytes,
    context: bytes, length: int, bits: int,
) -> npt.NDArray[np.uint64]:
    """The mask ``sign(u, v) PRG(s_uv) mod 2**bits`` client ``u = own_id`` adds for ``v``.

    ``s_uv`` is the HKDF key of ``ECDH(s_u, s_v)`` under the ``"pairwise-mask"`` label
    and the round's ``context`` (Bonawitz et al. 2017; Bell et al. 2020,
    arXiv:2009.05807). ECDH is symmetric, so the client masking (its own ``s_u`` with
    ``v``'s public key) and the server removing the mask of a dropped ``v`` (the
    reconstructed ``s_v`` with ``u``'s public key) call this with the same ids.

    Parameters
    ----------
    own_id, peer_id : int
        ``u``, the client that adds the mask, and its neighbour ``v``.
    private_key : X25519PrivateKey
        The mask-key private key of either ``u`` or ``v``.
    public_key : bytes
        The other one's raw 32-byte public mask key.
    context : bytes
        The round's HKDF context (:attr:`~securefed.secagg.messages.SecAggConfig.context`).
    length, bits : int
        As in :func:`expand_mask`.

    Raises
    ------
    ProtocolError
        If the public key is malformed or of small order.
    """
    s_uv = derive_shared_key(private_key, public_key, PAIRWISE_MASK_LABEL, context=context)
    return pairwise_mask(s_uv, length, bits, pairwise_sign(own_id, peer_id))


def neg_mod(a: npt.NDArray[np.uint64], bits: int) -> npt.NDArray[np.uint64]:
    """``-a mod 2**bits`` for a uint64 array (uint64 wraps modulo 2**64)."""
    bits = _check_bits(bits)
    out = np.negative(np.asarray(a, dtype=np.uint64))
    if bits < _MAX_BITS:
        np.bitwise_and(out, _low_bits_mask(bits), out=out)
    return out


def add_mod(
    a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64], bits: int
) -> npt.NDArray[np.uint64]:
    """``(a + b) mod 2**bits`` elementwise for uint64 arrays."""
    bits = _check_bits(bits)
    out = np.add(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    if bits < _MAX_BITS:
        np.bitwise_and(out, _low_bits_mask(bits), out=out)
    return out


def sum_mod(arrays: Iterable[npt.NDArray[np.uint64]], bits: int) -> npt.NDArray[np.uint64]:
    """Sum uint64 arrays of one shape modulo ``2**bits``.

    Raises
    ------
    ConfigError
        If ``arrays`` is empty or the shapes differ.
    """
    bits = _check_bits(bits)
    total: npt.NDArray[np.uint64] | None = None
    for arr in arrays:
        a = np.asarray(arr, dtype=np.uint64)
        if total is None:
            total = a.copy()
        elif a.shape != total.shape:
            raise ConfigError(f"shape mismatch in sum_mod: {a.shape} vs {total.shape}")
        else:
            np.add(total, a, out=total)  # wraps modulo 2**64
    if total is None:
        raise ConfigError("sum_mod needs at least one array")
    if bits < _MAX_BITS:
        np.bitwise_and(total, _low_bits_mask(bits), out=total)
    return total
