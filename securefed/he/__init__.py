"""CKKS homomorphic aggregation (TenSEAL) with explicit key roles.

CKKS (Cheon, Kim, Kim and Song 2017, ASIACRYPT, "Homomorphic Encryption for
Arithmetic of Approximate Numbers") through TenSEAL (Benaissa et al. 2021,
arXiv:2104.03152). Pure: numpy and TenSEAL only, no Flower, no torch.

What is here
------------
``keys``
    :class:`CKKSConfig` (validated parameters and key role), the :data:`KEY_ROLES`
    registry (``authority``: only a key holder can decrypt; ``shared``: every client
    can, documented as weaker), :func:`generate_keys`, and the context guards
    :func:`server_context` (no secret key, asserted) and :func:`decryptor_context`.
``ckks``
    :func:`encrypt_vector` (chunked, framed bytes), :func:`add_ciphertexts` (server,
    public context) and :func:`decrypt_sum` (key holder, aggregate only).

Example
-------
>>> import numpy as np
>>> keys = generate_keys(CKKSConfig())
>>> cts = [encrypt_vector(keys.client_context, np.full(3, 0.5)) for _ in range(2)]
>>> total = add_ciphertexts(keys.public_context, cts)
>>> np.round(decrypt_sum(keys.secret_context, total, 3), 6).tolist()
[1.0, 1.0, 1.0]
"""

from securefed.he.ckks import (
    FRAME_MAGIC,
    Frame,
    add_ciphertexts,
    decrypt_sum,
    encrypt_vector,
    pack_frame,
    slot_count,
    unpack_frame,
)
from securefed.he.keys import (
    KEY_ROLES,
    MAX_COEFF_MODULUS_BITS,
    CKKSConfig,
    KeyMaterial,
    KeyRole,
    decryptor_context,
    export_public_context,
    generate_keys,
    load_context,
    server_context,
)

__all__ = [
    "FRAME_MAGIC",
    "KEY_ROLES",
    "MAX_COEFF_MODULUS_BITS",
    "CKKSConfig",
    "Frame",
    "KeyMaterial",
    "KeyRole",
    "add_ciphertexts",
    "decrypt_sum",
    "decryptor_context",
    "encrypt_vector",
    "export_public_context",
    "generate_keys",
    "load_context",
    "pack_frame",
    "server_context",
    "slot_count",
    "unpack_frame",
]
