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
    :func:`encrypt_vector` (chunked, framed bytes), :func:`add_ciphertexts` (public
    context), :func:`sum_frames` and :func:`decrypt_sum` (key holder).
``signed``
    What clients and the authority sign (enrolment, public context, contributions) and
    :func:`verify_contributions` against the verifier's own roster.
``flooding``
    The decryption-noise bound and the flooding width (Li and Micciancio 2021).
``authority``
    :class:`AuthorityPolicy` from the authority's own node config, :class:`KeyState`,
    and :func:`decrypt_contributions`, the only path by which a value is decrypted.

Example
-------
>>> import numpy as np
>>> keys = generate_keys(CKKSConfig())
>>> cts = [encrypt_vector(keys.client_context, np.full(3, 0.5)) for _ in range(2)]
>>> total = add_ciphertexts(keys.public_context, cts)
>>> np.round(decrypt_sum(keys.secret_context, total, 3), 6).tolist()  # unflooded: tests only
[1.0, 1.0, 1.0]
"""

from securefed.he.authority import (
    NODE_CONFIG_CKKS_KEYS,
    AuthorityPolicy,
    KeyState,
    decrypt_contributions,
    verify_enrolment,
)
from securefed.he.ckks import (
    FRAME_MAGIC,
    Frame,
    add_ciphertexts,
    check_ciphertext,
    decrypt_sum,
    encrypt_vector,
    pack_frame,
    slot_count,
    sum_frames,
    unpack_frame,
)
from securefed.he.flooding import Flooding, flood, flooding_for, fresh_noise_bound
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
from securefed.he.signed import (
    Contribution,
    context_fingerprint,
    sign_contribution,
    verify_contributions,
)

__all__ = [
    "FRAME_MAGIC",
    "KEY_ROLES",
    "MAX_COEFF_MODULUS_BITS",
    "NODE_CONFIG_CKKS_KEYS",
    "AuthorityPolicy",
    "CKKSConfig",
    "Contribution",
    "Flooding",
    "Frame",
    "KeyMaterial",
    "KeyRole",
    "KeyState",
    "add_ciphertexts",
    "check_ciphertext",
    "context_fingerprint",
    "decrypt_contributions",
    "decrypt_sum",
    "decryptor_context",
    "encrypt_vector",
    "export_public_context",
    "flood",
    "flooding_for",
    "fresh_noise_bound",
    "generate_keys",
    "load_context",
    "pack_frame",
    "server_context",
    "sign_contribution",
    "slot_count",
    "sum_frames",
    "unpack_frame",
    "verify_contributions",
    "verify_enrolment",
]
