"""``HomomorphicAggregation``: CKKS-encrypted updates, relayed by a server without the key.

CKKS (Cheon et al. 2017) through TenSEAL (Benaissa et al. 2021, arXiv:2104.03152). The
key holder is a designated SuperNode, the **authority**, named in every node's own
config (:class:`securefed.he.AuthorityPolicy`); the server only finds which node it is
and relays. Per run and round::

    enroll      (per key)  server -> every node: name, "am I the authority" [+ a
                           transport key signed with the node's roster identity]
    keygen      (per key)  server -> authority: CKKS parameters, the server's key role
                           [+ the signed transport keys] -> public context signed by the
                           authority [+ the secret context wrapped for each member]
    setup       (round)    train message + signed public context (first time per key) ->
                           client trains, encrypts [w/W · (x - g), w/W], signs the
                           ciphertext's digest (run, key, round, name) -> ciphertext
    (server)               checks each ciphertext parses under the public context
                           (``securefed.he.server_context`` asserts no secret key)
    decrypt     (round)    every signed ciphertext -> the authority, which verifies,
                           adds, decrypts once per round and floods -> the noisy sum

What the authority accepts (key role, roster, ``min_terms``, value bound, flooding
bits, key lifetime) is its own config, never this strategy's: a deviating server gets
a typed refusal and no secret (``docs/threat-model.md``). Keys rotate every
``key_rotation_rounds`` rounds (fresh enrolment and keygen; the authority refuses a
key past its own limit). ``shared``: every enrolled member also holds the secret key
(NVFlare's model; weaker: any member colluding with the server reads every update);
decryption stays with the authority, so that no two key holders can be asked for two
different sums of one round.

Range: CKKS wraps silently past ``max_abs_aggregate``; the wrapper refuses, when built,
any ``clients x clipping_range`` beyond it. This module does not import torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from securefed.exceptions import AggregationError, ConfigError, PayloadError
from securefed.he import CKKSConfig, check_ciphertext, context_fingerprint, server_context
from securefed.secagg import unflatten
from strategies.records import serialized_nbytes
from strategies.sum_only import PROTOCOL_RECORD, SumAggregator, SumOnlyAggregation, mean_metrics

__all__ = ["HomomorphicAggregation", "fingerprint"]

log = logging.getLogger(__name__)

#: SHA-256 hex digest naming a serialised public context (one key epoch).
fingerprint = context_fingerprint


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
        The key role the server expects (the authority refuses another).
    poly_modulus_degree, coeff_mod_bit_sizes, global_scale_bits
        CKKS parameters (:class:`securefed.he.CKKSConfig`).
    key_rotation_rounds : int
        Fresh keys every this many rounds (``[secure] ckks_key_rotation_rounds``).
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
        coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60),
        global_scale_bits: int = 84,
        key_rotation_rounds: int = 10,
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
        if isinstance(key_rotation_rounds, bool) or key_rotation_rounds < 1:
            raise ConfigError(f"key_rotation_rounds must be >= 1, got {key_rotation_rounds!r}")
        self.clipping_range = float(clipping_range)
        self.max_weight = int(max_weight)
        self.on_overflow = on_overflow
        self.key_rotation_rounds = int(key_rotation_rounds)
        self.authority: int | None = None
        self.public_context: bytes | None = None
        self._server_ctx: Any = None
        self._epoch = 0
        self._signature = b""
        self._key_rounds = 0  # rounds decrypted under the current key
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
            "epoch": self._epoch,
            "signature": self._signature.hex(),
            "key_rounds": self._key_rounds,
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
            self._epoch = int(state["epoch"])
            self._signature = bytes.fromhex(state["signature"])
            self._key_rounds = int(state["key_rounds"])
            self._delivered = {int(n) for n in state["delivered"]}
            self._wrapped = {int(n): bytes.fromhex(b) for n, b in state["wrapped"].items()}
            self._transport_public = bytes.fromhex(state["transport_public"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed HomomorphicAggregation state: {exc!r}") from None

    # ---------------------------------------------------------------- keys
    def _record(self, stage: str, **fields: Any) -> RecordDict:
        return RecordDict({PROTOCOL_RECORD: ConfigRecord({"protocol": "ckks", "stage": stage,
                                                          **fields})})

    def _enroll(self, server_round: int, grid: Grid) -> tuple[int, dict[int, tuple]]:
        """Ask every node for its name and role; return the authority and the signed
        transport keys ``{node: (name, key, signature)}`` (``shared``)."""
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if not nodes:
            raise AggregationError("no node connected to act as the CKKS key authority")
        replies = self._send(server_round, {n: self._record("enroll") for n in nodes},
                             "enroll")
        authorities, enrolled, refusals = [], {}, {}
        for node, msg in sorted(replies.items()):
            if msg.has_error():
                refusals[node] = msg.error.reason
            record = None if msg.has_error() else msg.content.config_records.get(
                PROTOCOL_RECORD)
            if record is None:
                continue
            if record.get("authority") is True:
                authorities.append(node)
            key, sig, name = (record.get("transport-public"), record.get("signature"),
                              record.get("name"))
            if isinstance(key, bytes) and isinstance(sig, bytes) and isinstance(name, str):
                enrolled[node] = (name, key, sig)
        if len(authorities) != 1:
            why = "; ".join(f"node {n}: {r}" for n, r in list(refusals.items())[:3])
            raise AggregationError(f"{len(authorities)} nodes say they are the CKKS key "
                                   f"authority ({authorities}); their configs must name one"
                                   + (f". Refusals: {why}" if why else ""))
        return authorities[0], enrolled

    def _keygen(self, server_round: int, grid: Grid) -> None:
        self.authority, enrolled = self._enroll(server_round, grid)
        if self.ckks.role.clients_hold_secret_key and self.authority not in enrolled:
            raise AggregationError(f"CKKS authority node {self.authority} did not enrol")
        c = self.ckks
        members = {n: v for n, v in enrolled.items() if n != self.authority}
        request = self._record(
            "keygen", **{"poly-modulus-degree": c.poly_modulus_degree,
                         "coeff-bits": list(c.coeff_mod_bit_sizes),
                         "scale-bits": c.global_scale_bits, "key-role": c.key_role,
                         "nodes": list(members),
                         "names": [v[0] for v in members.values()],
                         "transport-keys": [v[1] for v in members.values()],
                         "signatures": [v[2] for v in members.values()]})
        record = self._ask_authority(server_round, "keygen", request, "generate keys")
        public = record.get("public-context")
        if not isinstance(public, bytes):
            raise AggregationError("the CKKS authority sent no public context")
        self._server_ctx = server_context(public)  # PrivacyError if it holds a secret key
        self.public_context = public
        self._epoch = int(record.get("epoch", 0))  # type: ignore[arg-type]
        self._signature = bytes(record.get("signature", b""))  # type: ignore[arg-type]
        self._transport_public = bytes(record.get("transport-public", b""))  # type: ignore[arg-type]
        targets, blobs = record.get("wrapped-for", []), record.get("wrapped", [])
        self._wrapped = dict(zip(targets, blobs, strict=True))  # type: ignore[arg-type]
        self._delivered = set()
        self._key_rounds = 0
        log.info("CKKS keys: authority node %d, role %s, epoch %d, public context %d bytes",
                 self.authority, c.key_role, self._epoch, len(public))

    # --------------------------------------------------------------- round
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample via the inner strategy; attach the public context and the CKKS setup.

        Fresh keys before the first round and every ``key_rotation_rounds`` rounds."""
        self._grid = grid
        if self.public_context is None or self._key_rounds >= self.key_rotation_rounds:
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
                fields.update({"public-context": self.public_context, "epoch": self._epoch,
                               "public-signature": self._signature,
                               "transport-public": self._transport_public})
                sent_context += len(self.public_context)
                if node in self._wrapped:
                    fields.update({"wrapped-secret": self._wrapped[node],
                                   "authority": self.authority})
            content = RecordDict({**msg.content,
                                  **self._record("setup", **fields)})
            out.append(Message(content=content, message_type=msg.metadata.message_type,
                               dst_node_id=node, group_id=msg.metadata.group_id))
        self._note(ckks_context_bytes_sent=sent_context)
        return out

    def _contribution(self, msg: Message, length: int) -> tuple[str, bytes, bytes]:
        if msg.has_error():
            raise PayloadError(f"client reported an error: {msg.error.reason}")
        record = msg.content.config_records.get(PROTOCOL_RECORD)
        if record is None:
            raise PayloadError(f"reply lacks the {PROTOCOL_RECORD!r} record")
        ct, name, sig = record.get("ciphertext"), record.get("name"), record.get("signature")
        if not (isinstance(ct, bytes) and isinstance(name, str) and isinstance(sig, bytes)):
            raise PayloadError("reply lacks a ciphertext, name or signature")
        check_ciphertext(self._server_ctx, ct, length)
        return name, ct, sig

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                             MetricRecord | None]:
        """Forward the signed ciphertexts to the authority, finish the round from its sum.

        Raises
        ------
        AggregationError
            Too few valid ciphertexts, or the authority refused to decrypt.
        """
        stats = self.inner.current_stats
        length = int(sum(np.size(v) for v in self.inner.global_payload.values()))
        length += len(self.secure_stats)  # statistics summed in the channel (sum_only)
        good: dict[int, tuple[str, bytes, bytes]] = {}
        bytes_up: dict[int, int] = {}
        replied: list[Message] = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            try:
                good[node] = self._contribution(msg, length + 1)
            except PayloadError as exc:
                self._delivered.discard(node)
                self._reject(node, f"setup: malformed: {exc}")
                continue
            self._delivered.add(node)
            self._client_metrics(node, msg)
            bytes_up[node] = serialized_nbytes(msg.content.config_records[PROTOCOL_RECORD])
            replied.append(msg)
        for node in set(self._nodes) - set(good) - set(stats.rejected if stats else {}):
            self._reject(node, "setup: no reply before the round timeout")
        if stats is not None:
            stats.bytes_up = bytes_up
        need = max(2, self.inner.min_replies)
        if len(good) < need:
            raise AggregationError(f"round {server_round}: {len(good)} valid ciphertexts, "
                                   f"{need} required")
        values, facts = self._decrypt(server_round, list(good.values()), length + 1)
        self._key_rounds += 1
        update, summed = self.split_stats(values[:length], self.clipping_range, len(good))
        update_sum = unflatten(update * self.max_weight,
                               [(k, np.shape(v)) for k, v in
                                sorted(self.inner.global_payload.items())])
        weight_sum = float(values[length] * self.max_weight)
        self._note(secure="ckks", ckks_key_role=self.ckks.key_role,
                   ckks_authority=self.authority, ckks_terms=len(good),
                   ckks_key_epoch=self._epoch, exactness=self.exactness, **facts)
        return self.inner.aggregate_from_sum(server_round, update_sum, round(weight_sum),
                                             sorted(good),
                                             MetricRecord({**mean_metrics(replied), **summed}))

    def _ask_authority(self, server_round: int, stage: str, request: RecordDict,
                       what: str) -> ConfigRecord:
        """Send ``request`` to the authority; its reply's protocol record, or
        :class:`AggregationError` saying what it did not do and why."""
        node = self.authority
        assert node is not None
        reply = self._send(server_round, {node: request}, stage).get(node)
        if reply is None or reply.has_error():
            reason = "no reply" if reply is None else reply.error.reason
            raise AggregationError(f"round {server_round}: the CKKS authority (node {node}) "
                                   f"did not {what}: {reason}")
        record = reply.content.config_records.get(PROTOCOL_RECORD)
        if record is None:
            raise AggregationError(f"round {server_round}: the CKKS authority's {stage} "
                                   f"reply lacks the {PROTOCOL_RECORD!r} record")
        return record

    def _decrypt(self, server_round: int, contributions: list[tuple[str, bytes, bytes]],
                 length: int) -> tuple[np.ndarray, dict[str, float]]:
        assert self.authority is not None
        request = self._record("decrypt", **{
            "round-id": server_round, "length": length,
            "names": [c[0] for c in contributions],
            "ciphertexts": [c[1] for c in contributions],
            "signatures": [c[2] for c in contributions]})
        record = self._ask_authority(server_round, "decrypt", request,
                                     "decrypt the aggregate")
        raw = record.get("sum")
        if not isinstance(raw, bytes) or len(raw) != 8 * length:
            raise AggregationError(f"round {server_round}: malformed decrypted sum")
        values = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise AggregationError(f"round {server_round}: non-finite decrypted sum")
        facts = {"ckks_flooding_sigma": float(record.get("flooding-sigma", 0.0)),  # type: ignore[arg-type]
                 "ckks_error_bound": float(record.get("error-bound", 0.0)),  # type: ignore[arg-type]
                 "ckks_bytes_to_authority": int(serialized_nbytes(
                     request[PROTOCOL_RECORD]))}
        return values, facts
