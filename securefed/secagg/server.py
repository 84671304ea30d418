"""The SecAgg+ server as an explicit state machine with no I/O.

The server of Bell et al. 2020 (arXiv:2009.05807, on Bonawitz et al. 2017) collects
each stage's messages, then closes the stage and produces the next stage's messages::

    ADVERTISE_KEYS  receive(AdvertiseKeys)*   broadcast_keys()  -> {id: KeysBroadcast}
    SHARE_KEYS      receive(ShareKeys)*       route_shares()    -> {id: ShareBundle}
    MASKED_INPUT    receive(MaskedInput)*     request_unmask()  -> {id: UnmaskRequest}
                                  (malicious) request_consistency() -> {id: ConsistencyRequest}
    CONSISTENCY     receive(ConsistencySignature)*  request_unmask() -> {id: UnmaskRequest}
    UNMASK          receive(UnmaskResponse)*  finish()          -> AggregateResult
    DONE

In malicious mode (``malicious=True``) the server also forwards each client's roster name
and signature, the members map ``U1`` (id -> name) and, before unmasking, the survivor
set ``U3`` and every signature on it (Bonawitz et al. 2017, Sec. 6); it needs
:func:`~securefed.secagg.auth.consistency_threshold` signatures to go on. The server
holds no roster and verifies no signature: the clients do (:mod:`securefed.secagg.auth`).

The client sets ``U1 ⊇ U2 ⊇ U3 ⊇ U4`` are those whose message of each stage arrived.
Every message is validated before it changes any state; a bad one raises a typed
error (:class:`ProtocolError` or :class:`~securefed.exceptions.PayloadError`) and is
otherwise ignored. Closing a stage checks that every client whose secret may be needed
still has at least ``t`` neighbours holding its shares; otherwise
:class:`DropoutError` is raised: never a wrong aggregate.

Unmasking: for ``u`` in ``U3`` the self-mask seed ``b_u`` is reconstructed from the
shares of its neighbours in ``U4``; for ``v`` in ``U2 \\ U3`` with a neighbour in
``U3`` the private key ``s_v`` is reconstructed and the pairwise masks
``sign(u, v) PRG(s_uv)`` it shares with those neighbours are removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefed.exceptions import ConfigError, PayloadError
from securefed.secagg.auth import consistency_threshold
from securefed.secagg.crypto import PUBLIC_KEY_BYTES
from securefed.secagg.errors import DropoutError, ProtocolError, SumRangeError
from securefed.secagg.graph import NeighbourGraph, build_graph
from securefed.secagg.masks import add_mod, expand_mask, neg_mod, pairwise_mask_between
from securefed.secagg.messages import (
    ADVERTISE_KEYS,
    BUNDLE_BYTES,
    CONSISTENCY,
    DONE,
    MASKED_INPUT,
    SHARE_KEYS,
    SIGNATURE_BYTES,
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
    check_stage,
)
from securefed.secagg.quantize import dequantize_sum
from securefed.secagg.shamir import PRIME, combine

__all__ = ["AggregateResult", "SecAggServer"]

_MESSAGE_STAGE: dict[type, str] = {
    AdvertiseKeys: ADVERTISE_KEYS,
    ShareKeys: SHARE_KEYS,
    MaskedInput: MASKED_INPUT,
    ConsistencySignature: CONSISTENCY,
    UnmaskResponse: UNMASK,
}


@dataclass(frozen=True)
class AggregateResult:
    """What the server learns: the sum over the survivors, and nothing else.

    Parameters
    ----------
    total : numpy.ndarray of uint64
        ``sum_{u in survivors} q_u mod 2**bits`` (with the weight field, if any).
    values : numpy.ndarray of float64
        The dequantised sum of the ``vector_length`` values.
    weight_sum : int or None
        Sum of the weight fields, ``None`` without a weight field.
    survivors : tuple of int
        The clients whose inputs are in the sum (``U3``), sorted.
    """

    total: npt.NDArray[np.uint64]
    values: npt.NDArray[np.float64]
    weight_sum: int | None
    survivors: tuple[int, ...]


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SecAggServer:
    """The server of one SecAgg+ round.

    Parameters
    ----------
    config : SecAggConfig
        The round's shared config; ``config.num_clients`` must equal ``len(client_ids)``.
    client_ids : sequence of int
        The sampled clients, distinct ints ``>= 1``.
    graph_seed : bytes or None
        Public 32-byte seed of the neighbour graph; ``None`` draws one from the OS.
    malicious : bool
        Run the malicious-server protocol (signed keys, members map, consistency round).

    Raises
    ------
    ConfigError
        If the ids or the seed are invalid or do not match the config.
    """

    def __init__(
        self, config: SecAggConfig, client_ids: Sequence[int], graph_seed: bytes | None = None,
        *, malicious: bool = False,
    ) -> None:
        if not isinstance(config, SecAggConfig):
            raise ConfigError(f"config must be a SecAggConfig, got {config!r}")
        ids = list(client_ids)
        if len(ids) != config.num_clients:
            raise ConfigError(
                f"got {len(ids)} client ids but config.num_clients = {config.num_clients}"
            )
        seed = os.urandom(32) if graph_seed is None else graph_seed
        self.config = config
        self.graph: NeighbourGraph = build_graph(
            ids, seed, config.graph.degree, config.graph.threshold
        )
        self._stage = ADVERTISE_KEYS
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._shares: dict[int, dict[int, bytes]] = {}
        self._masked: dict[int, npt.NDArray[np.uint64]] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self._responses: dict[int, UnmaskResponse] = {}
        self.malicious = bool(malicious)
        self._signed: dict[int, tuple[str, bytes]] = {}
        self._consistency: dict[int, bytes] = {}

    @property
    def stage(self) -> str:
        """The current stage (one of :data:`~securefed.secagg.messages.STAGES`)."""
        return self._stage

    @property
    def survivors(self) -> dict[str, tuple[int, ...]]:
        """The clients whose message of each stage arrived so far (sorted ids)."""
        return {
            ADVERTISE_KEYS: tuple(sorted(self._keys)),
            SHARE_KEYS: tuple(sorted(self._shares)),
            MASKED_INPUT: tuple(sorted(self._masked)),
            **({CONSISTENCY: tuple(sorted(self._consistency))} if self.malicious else {}),
            UNMASK: tuple(sorted(self._responses)),
        }

    def _expect(self, stage: str, action: str) -> None:
        check_stage(self._stage, stage, action)

    def _check_sender(self, sender: object, allowed: Iterable[int], done: Iterable[int]) -> int:
        if not _is_id(sender) or sender not in set(allowed):
            raise ProtocolError(f"message from {sender!r}, which may not send in {self._stage!r}")
        assert isinstance(sender, int)
        if sender in set(done):
            raise ProtocolError(f"duplicate {self._stage!r} message from client {sender}")
        return sender

    def receive(self, message: object) -> None:
        """Validate and record one client message of the current stage.

        Raises
        ------
        ProtocolError
            If the message is not a SecAgg+ client message, belongs to another stage,
            comes from an unknown, dropped or repeating sender, or is malformed.
        PayloadError
            If a masked vector has the wrong length or dtype, or values ``>= 2**bits``.
        """
        expected = _MESSAGE_STAGE.get(type(message))
        if expected is None:
            raise ProtocolError(f"not a SecAgg+ client message: {type(message).__name__}")
        self._expect(expected, f"receiving {type(message).__name__}")
        if isinstance(message, AdvertiseKeys):
            self._receive_keys(message)
        elif isinstance(message, ShareKeys):
            self._receive_shares(message)
        elif isinstance(message, MaskedInput):
            self._receive_masked(message)
        elif isinstance(message, ConsistencySignature):
            self._receive_consistency(message)
        elif isinstance(message, UnmaskResponse):
            self._receive_unmask(message)

    def _receive_keys(self, msg: AdvertiseKeys) -> None:
        sender = self._check_sender(msg.sender, self.graph.client_ids, self._keys)
        keys = (msg.c_public, msg.s_public)
        for key in keys:
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
                raise ProtocolError(
                    f"public key of client {sender} is not {PUBLIC_KEY_BYTES} bytes"
                )
        if keys[0] == keys[1]:
            raise ProtocolError(f"client {sender} advertised the same key twice")
        taken = {key for pair in self._keys.values() for key in pair}
        if taken.intersection(keys):
            # Honest clients refuse a broadcast with a repeated key: accepting a copied
            # key would let one client stall the round.
            raise ProtocolError(f"client {sender} advertised a key another client already uses")
        if self.malicious:
            name, sig = msg.name, msg.signature
            if not isinstance(name, str) or not name or not isinstance(sig, bytes) \
                    or len(sig) != SIGNATURE_BYTES:
                raise ProtocolError(f"client {sender} sent no roster name and "
                                    f"{SIGNATURE_BYTES}-byte signature (malicious mode)")
            if name in {n for n, _ in self._signed.values()}:
                raise ProtocolError(f"client {sender} claims the name {name!r} of another "
                                    "client")
            self._signed[sender] = (name, sig)
        elif not (isinstance(msg.name, str) and msg.name == ""
                  and isinstance(msg.signature, bytes) and msg.signature == b""):
            raise ProtocolError(f"client {sender} sent a name or signature in semi-honest mode")
        self._keys[sender] = keys

    def broadcast_keys(self) -> dict[int, KeysBroadcast]:
        """Close ADVERTISE_KEYS: send each client its advertised neighbours' keys."""
        self._expect(ADVERTISE_KEYS, "broadcast_keys")
        u1 = set(self._keys)
        self._require(u1, u1, "advertise keys")
        members = {u: self._signed[u][0] for u in sorted(self._signed)}
        out = {}
        for u in sorted(self._keys):
            nbrs = [v for v in sorted(self.graph[u]) if v in self._keys]
            sigs = {v: self._signed[v][1] for v in nbrs} if self.malicious else {}
            out[u] = KeysBroadcast(u, {v: self._keys[v] for v in nbrs}, sigs, dict(members))
        self._stage = SHARE_KEYS
        return out

    def _receive_shares(self, msg: ShareKeys) -> None:
        sender = self._check_sender(msg.sender, self._keys, self._shares)
        if not isinstance(msg.ciphertexts, dict):
            raise ProtocolError("ciphertexts must be a dict")
        expected = {v for v in self.graph[sender] if v in self._keys}
        if not all(_is_id(v) for v in msg.ciphertexts) or set(msg.ciphertexts) != expected:
            raise ProtocolError(
                f"client {sender} must send one bundle to each advertised neighbour "
                f"{sorted(expected)}, got {sorted(msg.ciphertexts, key=repr)}"
            )
        for v, ct in msg.ciphertexts.items():
            if not isinstance(ct, bytes) or len(ct) != BUNDLE_BYTES:
                raise ProtocolError(f"bundle from {sender} to {v} is not {BUNDLE_BYTES} bytes")
        self._shares[sender] = dict(msg.ciphertexts)

    def route_shares(self) -> dict[int, ShareBundle]:
        """Close SHARE_KEYS: forward to each ``v`` in ``U2`` its neighbours' bundles."""
        self._expect(SHARE_KEYS, "route_shares")
        u2 = set(self._shares)
        self._require(u2, u2, "share keys")
        out = {
            v: ShareBundle(v, {u: self._shares[u][v] for u in sorted(self.graph[v]) if u in u2})
            for v in sorted(u2)
        }
        self._stage = MASKED_INPUT
        return out

    def _receive_masked(self, msg: MaskedInput) -> None:
        sender = self._check_sender(msg.sender, self._shares, self._masked)
        vec, cfg = msg.vector, self.config
        if not isinstance(vec, np.ndarray) or vec.dtype != np.uint64 or vec.ndim != 1:
            raise PayloadError(f"masked vector of client {sender} must be a 1-D uint64 array")
        if vec.size != cfg.masked_length:
            raise PayloadError(
                f"masked vector of client {sender} has length {vec.size}, "
                f"expected {cfg.masked_length}"
            )
        if not _is_id(msg.bits) or msg.bits != cfg.bits:
            raise PayloadError(f"client {sender} masked with bits={msg.bits!r}, not {cfg.bits}")
        if cfg.bits < 64 and vec.size and int(vec.max()) >= cfg.quantization.modulus:
            raise PayloadError(f"masked vector of client {sender} has values >= 2**{cfg.bits}")
        self._masked[sender] = vec.copy()

    def _dropped(self) -> set[int]:
        """``U2 \\ U3`` clients with a neighbour in ``U3``: their keys are needed."""
        u2, u3 = set(self._shares), set(self._masked)
        return {v for v in u2 - u3 if self.graph[v] & u3}

    def request_consistency(self) -> dict[int, ConsistencyRequest]:
        """Close MASKED_INPUT (malicious mode): announce ``U3`` to each of its clients."""
        if not self.malicious:
            raise ProtocolError("request_consistency is only legal in malicious mode")
        self._expect(MASKED_INPUT, "request_consistency")
        u3 = set(self._masked)
        self._require(u3, u3 | self._dropped(), "masked input")
        self._check_signers(u3, "masked input")
        out = {u: ConsistencyRequest(u, frozenset(u3)) for u in sorted(u3)}
        self._stage = CONSISTENCY
        return out

    def _receive_consistency(self, msg: ConsistencySignature) -> None:
        sender = self._check_sender(msg.sender, self._masked, self._consistency)
        if not isinstance(msg.signature, bytes) or len(msg.signature) != SIGNATURE_BYTES:
            raise ProtocolError(f"consistency signature of client {sender} is not "
                                f"{SIGNATURE_BYTES} bytes")
        self._consistency[sender] = msg.signature

    def _check_signers(self, signers: set[int], stage: str) -> None:
        need = consistency_threshold(self.config.num_clients, self.config.graph.threshold)
        if len(signers) < need:
            raise DropoutError(f"after {stage}, {len(signers)} clients remain to sign the "
                               f"survivor set; the consistency round needs T = {need}")

    def request_unmask(self) -> dict[int, UnmaskRequest]:
        """Close MASKED_INPUT (CONSISTENCY in malicious mode): ask each client in ``U3``
        (that signed ``U3``) for its neighbours' shares."""
        self._expect(CONSISTENCY if self.malicious else MASKED_INPUT, "request_unmask")
        u3 = set(self._masked)
        askable = set(self._consistency) if self.malicious else u3
        if self.malicious:
            self._check_signers(askable, "consistency")
        dropped = self._dropped()
        self._require(askable, u3 | dropped, "masked input" if not self.malicious
                      else "consistency")
        signatures = dict(sorted(self._consistency.items()))
        out = {
            u: UnmaskRequest(u, frozenset(self.graph[u] & u3), frozenset(self.graph[u] & dropped),
                             dict(signatures))
            for u in sorted(askable)
        }
        self._requests = out
        self._stage = UNMASK
        return out

    def _receive_unmask(self, msg: UnmaskResponse) -> None:
        sender = self._check_sender(msg.sender, self._requests, self._responses)
        req = self._requests[sender]
        for name, shares, want in (
            ("b_shares", msg.b_shares, req.survivors),
            ("s_shares", msg.s_shares, req.dropped),
        ):
            if (
                not isinstance(shares, dict)
                or not all(_is_id(p) for p in shares)
                or set(shares) != set(want)
            ):
                raise ProtocolError(f"{name} of client {sender} must cover exactly {sorted(want)}")
            for value in shares.values():
                if not _is_id(value) or not 0 <= value < PRIME:
                    raise ProtocolError(f"{name} of client {sender} holds a non-field element")
        self._responses[sender] = msg

    def _require(self, holders: set[int], needed: set[int], stage: str) -> None:
        """Raise DropoutError unless every client in ``needed`` has ``t`` neighbours left."""
        t = self.config.graph.threshold
        if not holders:
            raise DropoutError(f"no client completed {stage}")
        for u in sorted(needed):
            left = len(self.graph[u] & holders)
            if left < t:
                raise DropoutError(
                    f"after {stage}, client {u} has {left} neighbours left to hold its shares; "
                    f"threshold t={t} (at most k - t = {self.config.graph.degree - t} may drop)"
                )

    def finish(self) -> AggregateResult:
        """Close UNMASK: reconstruct the secrets, remove every mask, return the sum.

        Raises
        ------
        DropoutError
            If fewer than ``t`` neighbours of a needed client answered.
        ProtocolError
            If the revealed shares are inconsistent.
        """
        self._expect(UNMASK, "finish")
        cfg, t = self.config, self.config.graph.threshold
        u3, u4 = set(self._masked), set(self._responses)
        dropped = self._dropped()
        self._require(u4, u3 | dropped, "unmask")
        bits, length = cfg.bits, cfg.masked_length
        total = np.zeros(length, dtype=np.uint64)
        for u in sorted(u3):
            total = add_mod(total, self._masked[u], bits)
            shares = {v: self._responses[v].b_shares[u] for v in sorted(self.graph[u] & u4)}
            b_u = combine(shares, t)
            total = add_mod(total, neg_mod(expand_mask(b_u, length, bits), bits), bits)
        for v in sorted(dropped):
            shares = {w: self._responses[w].s_shares[v] for w in sorted(self.graph[v] & u4)}
            try:
                s_v = X25519PrivateKey.from_private_bytes(combine(shares, t))
            except ValueError as exc:
                raise ProtocolError(f"reconstructed key of client {v} is invalid: {exc}") from None
            for u in sorted(self.graph[v] & u3):
                mask = pairwise_mask_between(u, v, s_v, self._keys[u][1], cfg.context,
                                             length, bits)
                total = add_mod(total, neg_mod(mask, bits), bits)
        n = len(u3)
        values_part = total[: cfg.vector_length]
        weight_sum = int(total[-1]) if cfg.has_weight else None
        try:
            values = dequantize_sum(values_part, n, cfg.quantization)
        except PayloadError as exc:
            raise SumRangeError(f"unmasked sum of {n} clients is out of range: {exc}") from None
        if cfg.has_weight and weight_sum is not None \
                and weight_sum > n * cfg.quantization.max_weight:
            raise SumRangeError(f"unmasked weight sum {weight_sum} exceeds n * max_weight = "
                                f"{n * cfg.quantization.max_weight}")
        self._stage = DONE
        return AggregateResult(total, values, weight_sum, tuple(sorted(u3)))
