"""Encrypt, add and decrypt vectors with CKKS (Cheon et al. 2017) through TenSEAL.

A vector longer than the slot count (``poly_modulus_degree / 2``) is split into chunks,
one ``tenseal.CKKSVector`` each. The chunks travel in one framed byte string::

    magic  b"SFCK"        4 bytes
    version               1 byte   (1)
    terms                 uint32   how many client vectors were summed into this one
    count                 uint32   number of chunks
    count × (values uint32, nbytes uint64)
    count × ciphertext bytes       (TenSEAL ``CKKSVector.serialize()``)

all integers little-endian. Every parse checks the magic, the version, that the
declared lengths add up to the byte string exactly, and that each chunk decodes to a
CKKS vector of the declared length; anything else is a
:class:`~securefed.exceptions.PayloadError`, never a crash.

``terms`` is not authenticated, so the key authority never trusts it: it adds the
clients' signed ciphertexts itself (:mod:`securefed.he.authority`) and decrypts only
that sum (``docs/threat-model.md``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts

from securefed.exceptions import ConfigError, PayloadError
from securefed.he.keys import decryptor_context, load_context, server_context

__all__ = [
    "FRAME_MAGIC",
    "Frame",
    "add_ciphertexts",
    "check_ciphertext",
    "decrypt_sum",
    "encrypt_vector",
    "pack_frame",
    "slot_count",
    "unpack_frame",
]

FRAME_MAGIC = b"SFCK"
_VERSION = 1
_HEAD = struct.Struct("<4sBII")
_ENTRY = struct.Struct("<IQ")


@dataclass(frozen=True)
class Frame:
    """A parsed ciphertext frame.

    Attributes
    ----------
    terms : int
        Client vectors summed into this ciphertext (1 for a fresh encryption).
    values : tuple of int
        Values held by each chunk.
    chunks : tuple of bytes
        Serialised ``tenseal.CKKSVector`` of each chunk.
    """

    terms: int
    values: tuple[int, ...]
    chunks: tuple[bytes, ...]

    @property
    def length(self) -> int:
        """Total number of values."""
        return sum(self.values)


def pack_frame(frame: Frame) -> bytes:
    """Serialise ``frame`` in the format of this module's docstring."""
    if len(frame.values) != len(frame.chunks):
        raise PayloadError("a frame needs one value count per chunk")
    parts = [_HEAD.pack(FRAME_MAGIC, _VERSION, frame.terms, len(frame.chunks))]
    parts += [_ENTRY.pack(v, len(c)) for v, c in zip(frame.values, frame.chunks, strict=True)]
    parts += list(frame.chunks)
    return b"".join(parts)


def unpack_frame(data: bytes) -> Frame:
    """Parse a frame, checking its structure (not yet the ciphertexts themselves).

    Raises
    ------
    PayloadError
        Wrong type, magic or version; zero chunks or terms; declared lengths that do not
        add up to the byte string exactly.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"a CKKS ciphertext must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEAD.size:
        raise PayloadError(f"CKKS ciphertext truncated: {len(data)} bytes, header needs "
                           f"{_HEAD.size}")
    magic, version, terms, count = _HEAD.unpack_from(data, 0)
    if magic != FRAME_MAGIC:
        raise PayloadError(f"not a securefed CKKS ciphertext (magic {magic!r})")
    if version != _VERSION:
        raise PayloadError(f"unsupported CKKS frame version {version}")
    if count == 0 or terms == 0:
        raise PayloadError(f"CKKS frame declares {count} chunks and {terms} terms; "
                           "both must be positive")
    body = _HEAD.size + count * _ENTRY.size
    if body > len(data):
        raise PayloadError(f"CKKS ciphertext truncated: {count} chunk entries need {body} "
                           f"bytes, got {len(data)}")
    entries = [_ENTRY.unpack_from(data, _HEAD.size + i * _ENTRY.size) for i in range(count)]
    if any(v == 0 or n == 0 for v, n in entries):
        raise PayloadError("CKKS frame declares an empty chunk")
    if body + sum(n for _, n in entries) != len(data):
        raise PayloadError(f"CKKS frame lengths add up to {body + sum(n for _, n in entries)} "
                           f"bytes, got {len(data)} (truncated or padded)")
    chunks, off = [], body
    for _, n in entries:
        chunks.append(data[off:off + n])
        off += n
    return Frame(terms=terms, values=tuple(v for v, _ in entries), chunks=tuple(chunks))


def _load_vector(ctx: Any, chunk: bytes, values: int) -> Any:
    try:
        vec = ts.ckks_vector_from(ctx, chunk)
        size = vec.size()
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError on bad streams
        raise PayloadError(f"malformed CKKS ciphertext chunk: {exc}") from None
    if size != values:
        raise PayloadError(f"CKKS chunk holds {size} values, frame declares {values}")
    return vec


def slot_count(ctx: Any) -> int:
    """Values one ciphertext holds under ``ctx``: ``poly_modulus_degree // 2``."""
    ctx = load_context(ctx)
    return int(ctx.data.seal_context().first_context_data().parms().poly_modulus_degree()) // 2


def encrypt_vector(ctx: Any, x: np.ndarray) -> bytes:
    """Encrypt a real vector with CKKS under the public key.

    Parameters
    ----------
    ctx : bytes or tenseal.Context
        The client's context: public (``authority``) or secret (``shared``); either
        encrypts with the public key.
    x : numpy.ndarray
        Finite real values, flattened in C order. Split into chunks of at most the slot
        count (``poly_modulus_degree / 2``) values.

    Returns
    -------
    bytes
        A frame (module docstring) with ``terms = 1``.

    Raises
    ------
    PayloadError
        Empty, non-real or non-finite input, values too large for the scale, or
        malformed context bytes.
    """
    ctx = load_context(ctx)
    arr = np.asarray(x)
    if arr.size == 0 or not (np.issubdtype(arr.dtype, np.floating)
                             or np.issubdtype(arr.dtype, np.integer)):
        raise PayloadError(f"expected a non-empty real array, got dtype {arr.dtype} "
                           f"and size {arr.size}")
    flat = arr.astype(np.float64, copy=False).ravel()
    if not np.all(np.isfinite(flat)):
        raise PayloadError("cannot encrypt non-finite values (NaN or inf)")
    slots = slot_count(ctx)
    chunks, values = [], []
    for start in range(0, flat.size, slots):
        part = flat[start:start + slots]
        try:
            chunks.append(bytes(ts.ckks_vector(ctx, part.tolist()).serialize()))
        except Exception as exc:  # e.g. values too large for the scale and modulus
            raise PayloadError(f"CKKS encryption failed: {exc}") from None
        values.append(part.size)
    return pack_frame(Frame(terms=1, values=tuple(values), chunks=tuple(chunks)))


def check_ciphertext(ctx: Any, ciphertext: bytes, length: int) -> None:
    """Check that ``ciphertext`` parses, holds ``length`` values and loads under ``ctx``.

    Raises
    ------
    PayloadError
        A malformed frame or chunk, or another length.
    """
    ctx = load_context(ctx)
    frame = unpack_frame(ciphertext)
    if frame.length != length:
        raise PayloadError(f"ciphertext holds {frame.length} values, expected {length}")
    for chunk, n in zip(frame.chunks, frame.values, strict=True):
        _load_vector(ctx, chunk, n)


def sum_frames(ctx: Any, ciphertexts: Sequence[bytes], *,
               scale: float | None = None) -> bytes:
    """Add framed ciphertexts under any context (the authority's included).

    Parameters
    ----------
    ctx : bytes or tenseal.Context
        A context of the key the ciphertexts were made under.
    ciphertexts : sequence of bytes
        Frames with one chunk layout.
    scale : float, optional
        Every chunk must carry exactly this CKKS scale (the authority's
        ``2**global_scale_bits``): a smaller one would inflate the noise per value beyond
        what the flooding was sized for.

    Raises
    ------
    PayloadError
        No ciphertexts, a malformed one, different layouts, another scale, or chunks
        that cannot be added (other parameters or levels).
    """
    ctx = load_context(ctx)
    if isinstance(ciphertexts, bytes | bytearray) or len(ciphertexts) == 0:
        raise PayloadError("adding needs a non-empty sequence of ciphertexts")
    frames = [unpack_frame(c) for c in ciphertexts]
    layout = frames[0].values
    for i, f in enumerate(frames[1:], start=1):
        if f.values != layout:
            raise PayloadError(f"ciphertext {i} has {len(f.values)} chunks of lengths "
                               f"{list(f.values)[:4]}..., ciphertext 0 has {len(layout)} "
                               f"of {list(layout)[:4]}...; they cannot be added")
    out = []
    for j, n in enumerate(layout):
        total = None
        for f in frames:
            vec = _load_vector(ctx, f.chunks[j], n)
            if scale is not None and vec.ciphertext()[0].scale != scale:
                raise PayloadError(f"CKKS chunk {j} has scale {vec.ciphertext()[0].scale:.6g}, "
                                   f"the key's scale is {scale:.6g}")
            try:
                total = vec if total is None else total + vec
            except Exception as exc:  # mismatched parameters, scales or levels
                raise PayloadError(f"cannot add CKKS chunk {j}: {exc}") from None
        assert total is not None
        out.append(bytes(total.serialize()))
    terms = sum(f.terms for f in frames)
    if terms >= 2**32:
        raise PayloadError(f"too many terms in the sum ({terms})")
    return pack_frame(Frame(terms=terms, values=layout, chunks=tuple(out)))


def add_ciphertexts(server_ctx: Any, ciphertexts: Sequence[bytes]) -> bytes:
    """Add encrypted vectors homomorphically, on the server, without any secret key.

    Parameters
    ----------
    server_ctx : bytes or tenseal.Context
        The public context; a context with a secret key is refused
        (:func:`~securefed.he.keys.server_context`).
    ciphertexts : sequence of bytes
        Frames from :func:`encrypt_vector` (or earlier sums) with identical chunk layout.

    Returns
    -------
    bytes
        The frame of the sum; ``terms`` is the sum of the inputs' terms.

    Raises
    ------
    PrivacyError
        If ``server_ctx`` holds the secret key.
    PayloadError
        No ciphertexts, a malformed one, or chunk counts / lengths that differ.
    """
    return sum_frames(server_context(server_ctx), ciphertexts)


def decrypt_sum(secret_ctx: Any, ciphertext: bytes, length: int, *,
                min_terms: int = 2, max_abs: float | None = None) -> np.ndarray:
    """Decrypt an aggregate (the key holder only).

    Parameters
    ----------
    secret_ctx : bytes or tenseal.Context
        The secret-key context; a public one is refused.
    ciphertext : bytes
        A frame from :func:`add_ciphertexts`.
    length : int
        Expected number of values; a different total is a PayloadError.
    min_terms : int, optional
        Refuse a frame that sums fewer client vectors (default 2: never decrypt a single
        client's update by mistake). The count is not authenticated (module docstring).
    max_abs : float, optional
        Refuse a result with any ``|value| > max_abs``. CKKS ciphertexts are malleable
        and carry no integrity check: a tampered chunk that still parses decrypts to
        huge garbage (around 1e19 here), which this bound turns into a PayloadError.

    Returns
    -------
    numpy.ndarray
        ``float64`` vector of ``length`` values, the approximate sum (CKKS error is
        about ``2**-global_scale_bits`` times the noise; see ``bench/he.py``).

    Raises
    ------
    ConfigError
        If ``secret_ctx`` holds no secret key, or ``min_terms`` < 1.
    PayloadError
        Malformed ciphertext, wrong length, fewer than ``min_terms`` terms, or values
        beyond ``max_abs``.
    """
    if min_terms < 1:
        raise ConfigError(f"min_terms must be >= 1, got {min_terms}")
    ctx = decryptor_context(secret_ctx)
    frame = unpack_frame(ciphertext)
    if frame.length != length:
        raise PayloadError(f"ciphertext holds {frame.length} values, expected {length}")
    if frame.terms < min_terms:
        raise PayloadError(f"ciphertext sums {frame.terms} client vector(s), fewer than "
                           f"min_terms={min_terms}: refusing to decrypt a non-aggregate")
    out = np.empty(length, dtype=np.float64)
    off = 0
    for chunk, n in zip(frame.chunks, frame.values, strict=True):
        vec = _load_vector(ctx, chunk, n)
        try:
            out[off:off + n] = vec.decrypt()
        except Exception as exc:  # corrupted data that still parsed
            raise PayloadError(f"CKKS decryption failed: {exc}") from None
        off += n
    if not np.all(np.isfinite(out)):
        raise PayloadError("decrypted values are not finite (corrupted ciphertext)")
    if max_abs is not None and float(np.max(np.abs(out))) > max_abs:
        raise PayloadError(f"decrypted values reach {float(np.max(np.abs(out))):.3g}, beyond "
                           f"max_abs={max_abs:g} (tampered or overflowing ciphertext)")
    return out
