"""Secure aggregation (SecAgg+): the pure building blocks.

SecAgg+ (Bell et al. 2020, arXiv:2009.05807) builds on the secure aggregation of
Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning"): each client masks its quantised update so that the server learns only the
sum, and survives a configured number of dropouts. Everything here is numpy and
``cryptography`` only: no Flower, no torch, no I/O.

What is here
------------
``quantize``
    :class:`QuantizationConfig` (overflow bound checked when built), unbiased stochastic
    rounding into ``Z_{2^b}`` (:func:`quantize`), :func:`dequantize_sum` and the proven
    error bound :func:`sum_error_bound`. Out-of-range values are an error, or clipped
    and counted; never silently saturated.
``masks``
    :func:`expand_mask` (full 256-bit seed → ChaCha20 → uniform over ``Z_{2^b}``),
    signed :func:`pairwise_mask` (and the ECDH-keyed ``pairwise_mask_between`` the
    client and the server share) and modular helpers.
``shamir``
    t-of-n Shamir sharing of 32-byte secrets over ``GF(2**521 - 1)``
    (:func:`split`, :func:`combine`).
``crypto``
    X25519 key pairs, ECDH + HKDF-SHA256 with per-use labels, AES-256-GCM share
    bundles bound to sender, receiver, round and stage.
``graph``
    The random k-regular (Harary) neighbour graph, validated ``(n, k, t)`` and the
    union-bound :func:`recovery_failure_probability`.
``errors``
    :class:`SecAggError` and its subclasses.
``auth`` / ``floors``
    Malicious-server mode (Bonawitz et al. 2017 Sec. 6; Bell et al. 2020): signed keys
    bound to run, round, id and roster name, the members map, the consistency round
    and its threshold; a node's own floors for ``n``, ``k``, ``t``, bits and range.

``messages``
    Stage names (:data:`ADVERTISE_KEYS`, :data:`SHARE_KEYS`, :data:`MASKED_INPUT`,
    :data:`UNMASK`, :data:`DONE`), :class:`SecAggConfig` / :func:`make_config`, the
    frozen message dataclasses with deterministic wire sizes, and the stage check both
    state machines use.
``client`` / ``server``
    :class:`SecAggClient` and :class:`SecAggServer`: explicit state machines with no
    I/O; the client enforces the consistency rule (never both shares of one peer), the
    server validates every message and raises :class:`DropoutError` rather than ever
    return a wrong aggregate.
``client_checks`` / ``client_state``
    The checks a client runs on the server's messages before it reveals anything
    (receiver, neighbours, signed keys, the unmask request against the signed survivor
    set), and the state it keeps between stages.
``protocol``
    :func:`run_protocol`, the in-process round used by tests, benchmarks and
    ``securefed secagg plan``. Flower wiring lives outside this package.
"""

from __future__ import annotations

from securefed.secagg.auth import Authenticator, consistency_threshold
from securefed.secagg.client import SecAggClient
from securefed.secagg.crypto import (
    KEY_LABELS,
    PAIRWISE_MASK_LABEL,
    SHARE_ENCRYPTION_LABEL,
    KeyPair,
    associated_data,
    decrypt_bundle,
    derive_shared_key,
    encrypt_bundle,
    generate_keypair,
    load_public_key,
)
from securefed.secagg.errors import (
    DecryptionError,
    DropoutError,
    FloorError,
    ProtocolError,
    SecAggError,
    SumRangeError,
)
from securefed.secagg.floors import NODE_CONFIG_FLOORS, SecAggFloors
from securefed.secagg.graph import (
    GraphConfig,
    NeighbourGraph,
    build_graph,
    default_degree,
    default_threshold,
    recovery_failure_probability,
)
from securefed.secagg.masks import (
    MASK_NONCE,
    SEED_BYTES,
    add_mod,
    expand_mask,
    neg_mod,
    pairwise_mask,
    pairwise_sign,
    sum_mod,
)
from securefed.secagg.messages import (
    ADVERTISE_KEYS,
    CONSISTENCY,
    DONE,
    MASKED_INPUT,
    SEMI_HONEST_STAGES,
    SHARE_KEYS,
    STAGES,
    UNMASK,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeysBroadcast,
    MaskedInput,
    SecAggConfig,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    make_config,
)
from securefed.secagg.protocol import (
    DROPOUT_STAGES,
    ProtocolResult,
    flatten_payload,
    run_protocol,
    unflatten,
)
from securefed.secagg.quantize import (
    ClipReport,
    QuantizationConfig,
    dequantize_sum,
    min_bits_for,
    quantize,
    sum_error_bound,
)
from securefed.secagg.server import AggregateResult, SecAggServer
from securefed.secagg.shamir import PRIME, SECRET_BYTES, combine, split

__all__ = [
    "ADVERTISE_KEYS",
    "CONSISTENCY",
    "DONE",
    "DROPOUT_STAGES",
    "KEY_LABELS",
    "MASKED_INPUT",
    "MASK_NONCE",
    "NODE_CONFIG_FLOORS",
    "PAIRWISE_MASK_LABEL",
    "PRIME",
    "SECRET_BYTES",
    "SEED_BYTES",
    "SEMI_HONEST_STAGES",
    "SHARE_ENCRYPTION_LABEL",
    "SHARE_KEYS",
    "STAGES",
    "UNMASK",
    "AdvertiseKeys",
    "AggregateResult",
    "Authenticator",
    "ClipReport",
    "ConsistencyRequest",
    "ConsistencySignature",
    "DecryptionError",
    "DropoutError",
    "FloorError",
    "GraphConfig",
    "KeyPair",
    "KeysBroadcast",
    "MaskedInput",
    "NeighbourGraph",
    "ProtocolError",
    "ProtocolResult",
    "QuantizationConfig",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggFloors",
    "SecAggServer",
    "ShareBundle",
    "ShareKeys",
    "SumRangeError",
    "UnmaskRequest",
    "UnmaskResponse",
    "add_mod",
    "associated_data",
    "build_graph",
    "combine",
    "consistency_threshold",
    "decrypt_bundle",
    "default_degree",
    "default_threshold",
    "dequantize_sum",
    "derive_shared_key",
    "encrypt_bundle",
    "expand_mask",
    "flatten_payload",
    "generate_keypair",
    "load_public_key",
    "make_config",
    "min_bits_for",
    "neg_mod",
    "pairwise_mask",
    "pairwise_sign",
    "quantize",
    "recovery_failure_probability",
    "run_protocol",
    "split",
    "sum_error_bound",
    "sum_mod",
    "unflatten",
]
