"""``HomomorphicAggregation``: CKKS-encrypted updates, summed by a server without the key.

CKKS (Cheon et al. 2017) through TenSEAL (Benaissa et al. 2021, arXiv:2104.03152). The
key holder is a designated SuperNode, the **authority**: the lowest node id connected
when the run starts (recorded in :meth:`state_dict`). Per run and round::

    keygen      (once)   server -> authority: CKKS parameters [+ enrolled nodes' X25519
                         keys under "shared"] -> public context [+ each node's secret
                         context, AES-GCM-wrapped for that node only]
    setup       (round)  train message + public context (first time per node) ->
                         client trains, encrypts [w/W · (x - g), w/W] -> ciphertext
    (server)             add_ciphertexts with a context that holds no secret key
                         (``securefed.he.server_context`` asserts it)
    decrypt     (round)  aggregate ciphertext -> the authority (under "shared": any
                         enrolled contributor) -> the decrypted sum only

Key roles (``[secure] key_role``): ``authority`` (default): only the authority can
decrypt, and it only decrypts frames that sum at least ``min_replies`` client vectors.
``shared`` (NVFlare's model): every enrolled client holds the secret key, so any one of
them colluding with the server reads every update; documented as weaker. The secret
context never passes the server in clear: it is wrapped under an X25519/HKDF key
between the authority and each node (the server could still substitute keys: the
semi-honest model of ``DESIGN.md``).

Range: CKKS wraps silently past ``max_abs_aggregate``; the wrapper refuses, when built,
any ``clients x clipping_range`` beyond it. This module does not import torch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from securefed.exceptions import AggregationError, ConfigError, PayloadError
from securefed.he import CKKSConfig, add_ciphertexts, server_context
from securefed.secagg import unflatten
from strategies.records import serialized_nbytes
from strategies.sum_only import PROTOCOL_RECORD, SumAggregator, SumOnlyAggregation, mean_metrics

__all__ = ["HomomorphicAggregation", "fingerprint"]

log = logging.getLogger(__name__)


def fingerprint(context: bytes) -> str:
    """SHA-256 hex digest naming a serialised public context."""
    return hashlib.sha256(context).hexdigest()


class HomomorphicAggregation(SumOnlyAggregation):
    """CKKS aggregation around a sum-aggregating strategy (see the module docstring).

    Parameters
    ----------
    inner, method, exact_under_sum, allow_inexact, stage_timeout
        See :class:`~strategies.sum_only.SumOnlyAggregation`.
    clipping_range : float
        Every update coordinate must lie in ``[-c, c]``.
    max_weight : int
        Largest client weight; clients scale by ``w / max_weight``.
    on_overflow : {"error", "clip"}
        Out-of-range coordinates: refuse, or clip and report the count.
    key_role : {"authority", "shared"}
        Who holds the secret key.
    poly_modulus_degree, coeff_mod_bit_sizes, global_scale_bits
        CKKS parameters (:class:`securefed.he.CKKSConfig`).
    """

    wrapper_name = "HomomorphicAggregation"

    def __init__(
        self,
        inner: SumAggregator,
        *,
        method: str,
        exact_under_sum: bool,
        clipping_range: float,
        max_weight: int = 2**16,
        on_overflow: Literal["error", "clip"] = "error",
        key_role: str = "authority",
        poly_modulus_degree: int = 8192,
        coeff_mod_bit_sizes: tuple[int, ...] = (60, 40),
        global_scale_bits: int = 50,
        allow_inexact: bool = False,
        stage_timeout: float = 120.0,
    ) -> None:
        super().__init__(inner, method=method, exact_under_sum=exact_under_sum,
                         allow_inexact=allow_inexact, stage_timeout=stage_timeout)
        self.ckks = CKKSConfig(poly_modulus_degree=poly_modulus_degree,
                               coeff_mod_bit_sizes=tuple(coeff_mod_bit_sizes),
                               global_scale_bits=global_scale_bits, key_role=key_role)
        if not (np.isfinite(clipping_range) and clipping_range > 0):
            raise ConfigError(f"clipping_range must be a finite number > 0, got "
                              f"{clipping_range!r}")
        if max_weight < 1:
            raise ConfigError(f"max_weight must be >= 1, got {max_weight}")
        self.clipping_range = float(clipping_range)
        self.max_weight = int(max_weight)
        self.on_overflow = on_overflow
        self.authority: int | None = None
        self.public_context: bytes | None = None
        self._server_ctx: Any = None
        self._wrapped: dict[int, bytes] = {}  # node -> its wrapped secret context (shared)
        self._transport_public = b""
        self._delivered: set[int] = set()
        self._nodes: list[int] = []
        self.config_for(int(getattr(inner, "clients_per_round", 2)), 1)

    def config_for(self, num_clients: int, vector_length: int) -> CKKSConfig:
        """Check that ``num_clients`` updates in ``[-c, c]`` cannot wrap; return the config.

        Raises
        ------
        ConfigError
            If ``num_clients * clipping_range`` (or the weight sum ``num_clients``)
            reaches ``max_abs_aggregate``, past which CKKS decrypts garbage silently.
        """
        bound = self.ckks.max_abs_aggregate
        largest = num_clients * max(self.clipping_range, 1.0)
        if largest >= bound:
            raise ConfigError(
                f"CKKS range: {num_clients} clients x clipping_range "
                f"{self.clipping_range:g} = {largest:g} reaches max_abs_aggregate {bound:g} "
                f"of coeff_mod_bit_sizes {self.ckks.coeff_mod_bit_sizes} at scale "
                f"2^{self.ckks.global_scale_bits}; add data-prime bits or lower the scale")
        return self.ckks

    # ----------------------------------------------------------------- state
    def _own_state(self) -> dict[str, Any]:
        """The key authority, the public context and who already holds it (no secret)."""
        return {
            "authority": self.authority,
            "public_context": None if self.public_context is None
            else self.public_context.hex(),
            "delivered": sorted(self._delivered),
            "wrapped": {str(n): blob.hex() for n, blob in self._wrapped.items()},
            "transport_public": self._transport_public.hex(),
        }

    def _load_own_state(self, state: Mapping[str, Any]) -> None:
        try:
            public = state["public_context"]
            self.public_context = None if public is None else bytes.fromhex(public)
            self._server_ctx = None if public is None else server_context(self.public_context)
            self.authority = None if state["authority"] is None else int(state["authority"])
            self._delivered = {int(n) for n in state["delivered"]}
            self._wrapped = {int(n): bytes.fromhex(b) for n, b in state["wrapped"].items()}
            self._transport_public = bytes.fromhex(state["transport_public"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed HomomorphicAggregation state: {exc!r}") from None

    # ---------------------------------------------------------------- keys
    def _record(self, stage: str, **fields: Any) -> RecordDict:
        return RecordDict({PROTOCOL_RECORD: ConfigRecord({"protocol": "ckks", "stage": stage,
                                                          **fields})})

    def _keygen(self, server_round: int, grid: Grid) -> None:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if not nodes:
            raise AggregationError("no node connected to act as the CKKS key authority")
        self.authority = nodes[0]
        enrolled: dict[int, bytes] = {}
        if self.ckks.role.clients_hold_secret_key:
            replies = self._send(server_round, {n: self._record("enroll") for n in nodes},
                                 "enroll")
            for node, msg in replies.items():
                record = None if msg.has_error() else msg.content.config_records.get(
                    PROTOCOL_RECORD)
                key = None if record is None else record.get("transport-public")
                if isinstance(key, bytes) and len(key) == 32:
                    enrolled[node] = key
            if self.authority not in enrolled:
                raise AggregationError(f"CKKS authority node {self.authority} did not enrol")
        c = self.ckks
        request = self._record(
            "keygen", **{"poly-modulus-degree": c.poly_modulus_degree,
                         "coeff-bits": list(c.coeff_mod_bit_sizes),
                         "scale-bits": c.global_scale_bits, "key-role": c.key_role,
                         "nodes": list(enrolled), "transport-keys": list(enrolled.values())})
        reply = self._send(server_round, {self.authority: request}, "keygen").get(self.authority)
        if reply is None or reply.has_error():
            reason = "no reply" if reply is None else reply.error.reason
            raise AggregationError(f"CKKS key generation at node {self.authority} failed: "
                                   f"{reason}")
        record = reply.content.config_records.get(PROTOCOL_RECORD)
        public = None if record is None else record.get("public-context")
        if not isinstance(public, bytes):
            raise AggregationError("the CKKS authority sent no public context")
        self._server_ctx = server_context(public)  # PrivacyError if it holds a secret key
        self.public_context = public
        if enrolled:
            assert record is not None
            targets, blobs = record.get("wrapped-for", []), record.get("wrapped", [])
            self._wrapped = dict(zip(targets, blobs, strict=True))  # type: ignore[arg-type]
            self._transport_public = bytes(record.get("transport-public", b""))  # type: ignore[arg-type]
        log.info("CKKS keys: authority node %d, role %s, public context %d bytes",
                 self.authority, c.key_role, len(public))

    # --------------------------------------------------------------- round
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample via the inner strategy; attach the public context and the CKKS setup."""
        self._grid = grid
        if self.public_context is None:
            self._keygen(server_round, grid)
        assert self.public_context is not None
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        length = int(sum(np.size(v) for v in self.inner.global_payload.values()))
        length += len(self.secure_stats)  # statistics summed in the channel (sum_only)
        self.config_for(len(messages), length)
        self._nodes = [int(m.metadata.dst_node_id) for m in messages]
        sent_context = 0
        out = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            fields: dict[str, Any] = {
                "round-id": server_round, "vector-length": length,
                "clipping-range": self.clipping_range, "max-weight": self.max_weight,
                "on-overflow": self.on_overflow,
                "context-sha256": fingerprint(self.public_context)}
            if node not in self._delivered:
                fields["public-context"] = self.public_context
                sent_context += len(self.public_context)
                if node in self._wrapped:
                    fields.update({"wrapped-secret": self._wrapped[node],
                                   "transport-public": self._transport_public,
                                   "authority": self.authority})
            content = RecordDict({**msg.content,
                                  **self._record("setup", **fields)})
            out.append(Message(content=content, message_type=msg.metadata.message_type,
                               dst_node_id=node, group_id=msg.metadata.group_id))
        self._note(ckks_context_bytes_sent=sent_context)
        return out

    def _ciphertext(self, msg: Message) -> bytes:
        if msg.has_error():
            raise PayloadError(f"client reported an error: {msg.error.reason}")
        record = msg.content.config_records.get(PROTOCOL_RECORD)
        ct = None if record is None else record.get("ciphertext")
        if not isinstance(ct, bytes):
            raise PayloadError(f"reply lacks the {PROTOCOL_RECORD!r} ciphertext")
        return ct

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                             MetricRecord | None]:
        """Add the ciphertexts, have the key holder decrypt the sum, finish the round.

        Raises
        ------
        AggregationError
            Too few valid ciphertexts, or the key holder cannot decrypt.
        """
        stats = self.inner.current_stats
        good: dict[int, bytes] = {}
        bytes_up: dict[int, int] = {}
        replied: list[Message] = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            try:
                good[node] = self._ciphertext(msg)
            except PayloadError as exc:
                self._delivered.discard(node)
                self._reject(node, f"setup: {exc}")
                continue
            self._delivered.add(node)
            self._client_metrics(node, msg)
            bytes_up[node] = serialized_nbytes(msg.content.config_records[PROTOCOL_RECORD])
            replied.append(msg)
        for node in set(self._nodes) - set(good) - set(stats.rejected if stats else {}):
            self._reject(node, "setup: no reply before the round timeout")
        if stats is not None:
            stats.bytes_up = bytes_up
        length = int(sum(np.size(v) for v in self.inner.global_payload.values()))
        length += len(self.secure_stats)  # statistics summed in the channel (sum_only)
        need = max(2, self.inner.min_replies)
        if len(good) < need:
            raise AggregationError(f"round {server_round}: {len(good)} valid ciphertexts, "
                                   f"{need} required")
        try:
            total = add_ciphertexts(self._server_ctx, list(good.values()))
        except PayloadError:
            # one malformed ciphertext poisons the sum: find and drop it
            total = self._add_valid(good)
        values = self._decrypt(server_round, total, length + 1, len(good))
        update, summed = self.split_stats(values[:length], self.clipping_range, len(good))
        update_sum = unflatten(update * self.max_weight,
                               [(k, np.shape(v)) for k, v in
                                sorted(self.inner.global_payload.items())])
        weight_sum = float(values[length] * self.max_weight)
        self._note(secure="ckks", ckks_key_role=self.ckks.key_role,
                   ckks_authority=self.authority, ckks_terms=len(good),
                   exactness=self.exactness)
        return self.inner.aggregate_from_sum(server_round, update_sum, round(weight_sum),
                                             sorted(good),
                                             MetricRecord({**mean_metrics(replied), **summed}))

    def _add_valid(self, good: dict[int, bytes]) -> bytes:
        for node, ct in list(good.items()):
            try:
                add_ciphertexts(self._server_ctx, [ct, ct])
            except PayloadError as exc:
                self._reject(node, f"setup: malformed ciphertext: {exc}")
                del good[node]
        if len(good) < max(2, self.inner.min_replies):
            raise AggregationError(f"{len(good)} well-formed ciphertexts remain")
        return add_ciphertexts(self._server_ctx, list(good.values()))

    def _decryptor(self, contributors: Iterable[int]) -> list[int]:
        assert self.authority is not None
        if not self.ckks.role.clients_hold_secret_key:
            return [self.authority]
        holders = set(self._wrapped) | {self.authority}
        return [self.authority, *sorted(set(contributors) & holders - {self.authority})]

    def _decrypt(self, server_round: int, total: bytes, length: int, terms: int) -> np.ndarray:
        max_abs = terms * max(self.clipping_range, 1.0) * (1 + 1e-6)
        request = self._record("decrypt", ciphertext=total, length=length,
                               **{"min-terms": max(2, self.inner.min_replies),
                                  "max-abs": max_abs})
        reasons = []
        for node in self._decryptor(self._nodes):
            reply = self._send(server_round, {node: request}, "decrypt").get(node)
            if reply is None or reply.has_error():
                reasons.append(f"node {node}: "
                               f"{'no reply' if reply is None else reply.error.reason}")
                continue
            record = reply.content.config_records.get(PROTOCOL_RECORD)
            raw = None if record is None else record.get("sum")
            if isinstance(raw, bytes) and len(raw) == 8 * length:
                values = np.frombuffer(raw, dtype="<f8").astype(np.float64)
                if np.all(np.isfinite(values)):
                    return values
            reasons.append(f"node {node}: malformed decrypted sum")
        raise AggregationError(f"round {server_round}: no CKKS key holder decrypted the "
                               f"aggregate: {'; '.join(reasons)}")
