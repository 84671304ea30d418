"""Stage names, protocol config and the messages of SecAgg+.

The protocol of Bell et al. 2020 (arXiv:2009.05807, SecAgg+), built on Bonawitz et al.
2017 (CCS, "Practical Secure Aggregation"), runs in four stages, five against an active
server; the client and server state machines (:mod:`securefed.secagg.client`,
:mod:`securefed.secagg.server`) move through them in this order and end in :data:`DONE`::

    ADVERTISE_KEYS  client -> server  AdvertiseKeys   (two X25519 public keys; malicious:
                                                       name and Ed25519 signature)
                    server -> client  KeysBroadcast   (the neighbours' public keys; malicious:
                                                       their signatures, the members map U1)
    SHARE_KEYS      client -> server  ShareKeys       (AES-GCM share bundles, one per neighbour)
                    server -> client  ShareBundle     (the bundles addressed to the client)
    MASKED_INPUT    client -> server  MaskedInput     (the masked vector in Z_{2^b})
                    server -> client  ConsistencyRequest  (malicious only: the set U3)
    CONSISTENCY     client -> server  ConsistencySignature (malicious only: signed U3)
                    server -> client  UnmaskRequest   (surviving and dropped neighbours;
                                                       malicious: the signatures on U3)
    UNMASK          client -> server  UnmaskResponse  (self-mask or pairwise-key shares)

The semi-honest protocol skips :data:`CONSISTENCY`; :mod:`securefed.secagg.auth` signs
and verifies in malicious mode and :mod:`securefed.secagg.client_checks` holds the checks
a client runs on the server's messages (Bonawitz et al. 2017, Sec. 6). Both state
machines refuse a call out of stage with :func:`check_stage`.

Wire sizes
----------
Every message has a deterministic :attr:`wire_size` in bytes, used for the bytes-per-
client figures: a client id is 8 bytes (uint64), a public key 32, a Shamir share
:data:`SHARE_BYTES` = 66 (an element of ``GF(2**521 - 1)``), a ciphertext its length,
and a masked vector ``length * ceil(bits / 8)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from securefed.exceptions import ConfigError
from securefed.secagg.crypto import NONCE_BYTES, PUBLIC_KEY_BYTES
from securefed.secagg.errors import ProtocolError
from securefed.secagg.graph import GraphConfig
from securefed.secagg.quantize import QuantizationConfig

__all__ = [
    "ADVERTISE_KEYS",
    "BUNDLE_BYTES",
    "CONSISTENCY",
    "DONE",
    "ID_BYTES",
    "MASKED_INPUT",
    "SEMI_HONEST_STAGES",
    "SHARE_BYTES",
    "SHARE_KEYS",
    "SIGNATURE_BYTES",
    "STAGES",
    "UNMASK",
    "AdvertiseKeys",
    "ConsistencyRequest",
    "ConsistencySignature",
    "KeysBroadcast",
    "MaskedInput",
    "SecAggConfig",
    "ShareBundle",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "check_stage",
    "make_config",
]

ADVERTISE_KEYS = "advertise_keys"
SHARE_KEYS = "share_keys"
MASKED_INPUT = "masked_input"
CONSISTENCY = "consistency"
UNMASK = "unmask"
DONE = "done"
STAGES = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, CONSISTENCY, UNMASK, DONE)
"""The stages in protocol order; :data:`DONE` is terminal, :data:`CONSISTENCY` only in
malicious mode."""
SEMI_HONEST_STAGES = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASK, DONE)
"""The stages of the semi-honest protocol (no consistency round)."""
SIGNATURE_BYTES = 64
"""Bytes of an Ed25519 signature."""

ID_BYTES = 8
SHARE_BYTES = 66
"""Bytes of one Shamir share: ``ceil(521 / 8)``."""
BUNDLE_BYTES = NONCE_BYTES + 2 * SHARE_BYTES + 16
"""Bytes of one encrypted share bundle: nonce, self-mask share, key share, GCM tag."""


def check_stage(current: str, expected: str, action: str) -> None:
    """Refuse ``action`` unless a state machine is in stage ``expected``.

    Raises
    ------
    ProtocolError
        Naming the action, the stage it needs and the current stage.
    """
    if current != expected:
        raise ProtocolError(
            f"{action} is only legal in stage {expected!r}; current stage is {current!r}"
        )


@dataclass(frozen=True)
class SecAggConfig:
    """Everything the clients and the server of one SecAgg+ round agree on.

    Parameters
    ----------
    quantization : QuantizationConfig
        Clipping range, bits and ``num_clients`` (the number ``n`` of clients in the
        round); ``max_weight > 0`` adds a weight field as the last coordinate.
    vector_length : int
        Number of float values per client (without the weight field), ``>= 1``.
    degree, threshold : int or None
        ``k`` and ``t`` of the neighbour graph; ``None`` takes the defaults of
        :class:`~securefed.secagg.graph.GraphConfig` (``k = O(log n)``, ``t > k/2``).
    round_id : int
        Bound into every ciphertext and key derivation, ``0 <= round_id < 2**64``.

    Raises
    ------
    ConfigError
        If a value is invalid; the graph triple is validated by ``GraphConfig``.
    """

    quantization: QuantizationConfig
    vector_length: int
    degree: int | None = None
    threshold: int | None = None
    round_id: int = 0
    graph: GraphConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.quantization, QuantizationConfig):
            raise ConfigError(
                f"quantization must be a QuantizationConfig, got {self.quantization!r}"
            )
        for name, low in (("vector_length", 1), ("round_id", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.round_id >= 2**64:
            raise ConfigError(f"round_id must be < 2**64, got {self.round_id}")
        graph = GraphConfig.for_clients(self.quantization.num_clients, self.degree, self.threshold)
        object.__setattr__(self, "graph", graph)
        object.__setattr__(self, "degree", graph.degree)
        object.__setattr__(self, "threshold", graph.threshold)

    @property
    def num_clients(self) -> int:
        """``n``, the number of clients in the round."""
        return self.quantization.num_clients

    @property
    def has_weight(self) -> bool:
        """Whether the masked vector ends with an integer weight field."""
        return self.quantization.max_weight > 0

    @property
    def masked_length(self) -> int:
        """Length of the masked vector: ``vector_length`` plus the weight field."""
        return self.vector_length + int(self.has_weight)

    @property
    def bits(self) -> int:
        """Modulus exponent ``b``."""
        return self.quantization.bits

    @property
    def context(self) -> bytes:
        """HKDF context of the pairwise keys: the round id as 8 big-endian bytes."""
        return self.round_id.to_bytes(8, "big")


def make_config(
    num_clients: int,
    vector_length: int,
    clipping_range: float,
    bits: int = 32,
    *,
    degree: int | None = None,
    threshold: int | None = None,
    max_weight: int = 0,
    on_overflow: Literal["error", "clip"] = "error",
    round_id: int = 0,
) -> SecAggConfig:
    """Build a :class:`SecAggConfig` for ``n`` clients and a vector length.

    Parameters
    ----------
    num_clients : int
        ``n``, the clients sampled for the round.
    vector_length : int
        Float values per client (without the weight field).
    clipping_range : float
        ``c`` of the declared input range ``[-c, c]``.
    bits : int
        Modulus exponent; ``n * q_max < 2**bits`` is checked (and ``q_max`` is the
        finest grid that fits).
    degree, threshold : int or None
        Graph ``k`` and ``t``; defaults ``k = O(log n)``, ``t = floor(k/2) + 1``.
    max_weight : int
        ``> 0`` adds an integer weight field of at most this value.
    on_overflow : {"error", "clip"}
        Out-of-range values: :class:`~securefed.exceptions.PrivacyError`, or clip
        and count them.
    round_id : int
        Bound into ciphertexts and key derivations.

    Raises
    ------
    ConfigError
        If ``bits`` cannot hold the sum of ``n`` clients, or any value is invalid.
    """
    quant = QuantizationConfig(
        clipping_range=clipping_range,
        bits=bits,
        num_clients=num_clients,
        on_overflow=on_overflow,
        max_weight=max_weight,
    )
    return SecAggConfig(
        quantization=quant,
        vector_length=vector_length,
        degree=degree,
        threshold=threshold,
        round_id=round_id,
    )


@dataclass(frozen=True)
class AdvertiseKeys:
    """Client -> server: the public keys ``c_u`` (share encryption) and ``s_u`` (masks).

    In malicious mode also the sender's roster ``name`` and its Ed25519 ``signature``
    over run, round, id, name, config and both keys (empty in semi-honest mode).
    """

    sender: int
    c_public: bytes
    s_public: bytes
    name: str = ""
    signature: bytes = b""

    @property
    def wire_size(self) -> int:
        """``8 + 32 + 32`` bytes, plus the name and a 64-byte signature when signed."""
        signed = len(self.name.encode()) + _len(self.signature) if self.signature else 0
        return ID_BYTES + 2 * PUBLIC_KEY_BYTES + signed


@dataclass(frozen=True)
class KeysBroadcast:
    """Server -> client: ``{neighbour id: (c_public, s_public)}`` of advertised neighbours.

    Malicious mode adds each neighbour's ``signatures`` and the ``members`` map ``U1``
    ``{client id: roster name}`` of every client whose keys were advertised.
    """

    receiver: int
    neighbours: dict[int, tuple[bytes, bytes]]
    signatures: dict[int, bytes] = field(default_factory=dict)
    members: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ShareKeys:
    """Client -> server: ``{neighbour id: encrypted (b_u share, s_u share)}``."""

    sender: int
    ciphertexts: dict[int, bytes]

    @property
    def wire_size(self) -> int:
        """Sender id, then a receiver id and the ciphertext for every bundle."""
        return ID_BYTES + sum(ID_BYTES + _len(ct) for ct in self.ciphertexts.values())


@dataclass(frozen=True)
class ShareBundle:
    """Server -> client: ``{sender id: ciphertext}`` addressed to ``receiver``."""

    receiver: int
    ciphertexts: dict[int, bytes]


@dataclass(frozen=True)
class MaskedInput:
    """Client -> server: the masked vector ``y_u`` in ``Z_{2^b}`` (uint64)."""

    sender: int
    vector: npt.NDArray[np.uint64]
    bits: int

    @property
    def wire_size(self) -> int:
        """``8 + length * ceil(bits / 8)`` bytes."""
        return ID_BYTES + int(np.size(self.vector)) * math.ceil(self.bits / 8)


@dataclass(frozen=True)
class ConsistencyRequest:
    """Server -> client (malicious mode): the set ``U3`` whose masked inputs arrived."""

    receiver: int
    survivors: frozenset[int]


@dataclass(frozen=True)
class ConsistencySignature:
    """Client -> server (malicious mode): its Ed25519 signature on the ``U3`` it was told."""

    sender: int
    signature: bytes

    @property
    def wire_size(self) -> int:
        """``8 + 64`` bytes."""
        return ID_BYTES + _len(self.signature)


@dataclass(frozen=True)
class UnmaskRequest:
    """Server -> client: which neighbours survived (masked input received) or dropped.

    Malicious mode adds the consistency ``signatures`` ``{signer id: signature}`` on
    ``U3``; the client checks them and that the request is what ``U3`` implies.
    """

    receiver: int
    survivors: frozenset[int]
    dropped: frozenset[int]
    signatures: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class UnmaskResponse:
    """Client -> server: self-mask shares of survivors, key shares of dropped clients."""

    sender: int
    b_shares: dict[int, int]
    s_shares: dict[int, int]

    @property
    def wire_size(self) -> int:
        """Sender id, then an id and a 66-byte share for every share."""
        return ID_BYTES + (len(self.b_shares) + len(self.s_shares)) * (ID_BYTES + SHARE_BYTES)


def _len(value: Any) -> int:
    return len(value) if isinstance(value, bytes | bytearray) else 0
