"""``SecureAggregation``: SecAgg+ on Flower's Message API around an adapter strategy.

The server side of SecAgg+ (Bell et al. 2020, arXiv:2009.05807, on Bonawitz et al. 2017)
driven through any :class:`flwr.serverapp.Grid` (simulation engine, SuperLink, in-process
grid). One training round is four exchanges (five against a malicious server) with the
sampled nodes, in the order of Flower's own SecAgg+ workflow::

    setup          SecAgg+ config                   -> AdvertiseKeys (two X25519 keys)
    share-keys     KeysBroadcast                    -> ShareKeys (encrypted Shamir shares)
    masked-input   train message + ShareBundle      -> client trains, then masks its
                                                       update: MaskedInput (+ metrics)
    consistency    ConsistencyRequest (U3)          -> ConsistencySignature
                   (``adversary = "malicious"`` only)
    unmask         UnmaskRequest                    -> UnmaskResponse
    (server)       SecAggServer.finish()            -> sum of the survivors' inputs

Training happens in the masked-input stage, so between stages a client keeps only
small secrets (keys, seed, shares) in its ``context.state``, never its update; the key
stages are short and the global payload goes only to nodes that completed them.

What a client masks is its **update** ``x - g`` (new payload minus the global payload it
was sent), scaled by ``w / max_weight`` with its integer weight ``w`` (number of
training examples), and ``w`` itself travels in the masked vector's last field; the
server so learns ``sum_i w_i (x_i - g) / max_weight`` and ``sum_i w_i`` and nothing
about any single client. The inner strategy turns that into the FedAvg step
(``AdapterFedAvg.aggregate_from_sum``). Protocol state machines and the quantisation are
those of :mod:`securefed.secagg`; the client side is
:func:`securefed.app.secagg_mod.secagg_mod`.

Dropouts: a node that does not answer a stage (timeout, dead SuperNode, error reply,
malformed message) is out from that stage on; the server reconstructs what it needs
from the neighbours' shares, or raises :class:`~securefed.secagg.errors.DropoutError`
(an ``AggregationError``) when too many are gone: never a wrong aggregate.

Adversary modes: ``"malicious"`` (Bonawitz et al. 2017 Sec. 6; Bell et al. 2020, the
malicious variant) has clients sign their keys and the survivor set with roster
identities the server never supplies, and adds the consistency stage; the server only
forwards. ``"semi-honest"`` is the four-stage protocol. See ``docs/threat-model.md``.

This module is numpy-only; it never imports torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from securefed.exceptions import AggregationError, ConfigError, PayloadError
from securefed.secagg import (
    ADVERTISE_KEYS,
    CONSISTENCY,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    make_config,
    unflatten,
)
from securefed.secagg.serial import config_to_dict, decode_message, encode_message
from strategies.records import serialized_nbytes
from strategies.sum_only import PROTOCOL_RECORD, SumAggregator, SumOnlyAggregation, mean_metrics

__all__ = ["ADVERSARIES", "STAGE_NAMES", "SecureAggregation"]

log = logging.getLogger(__name__)

#: Wire names of the stages, in order (the ``stage`` field of the protocol record).
STAGE_NAMES = {ADVERTISE_KEYS: "setup", SHARE_KEYS: "share-keys",
               MASKED_INPUT: "masked-input", CONSISTENCY: "consistency", UNMASK: "unmask"}
_REPLY_KIND = {ADVERTISE_KEYS: "advertise-keys", SHARE_KEYS: "share-keys",
               MASKED_INPUT: "masked-input", CONSISTENCY: "consistency-signature",
               UNMASK: "unmask-response"}
#: ``adversary`` values: the wire value of the setup record (see ``secagg_mod``).
ADVERSARIES = ("semi-honest", "malicious")


class SecureAggregation(SumOnlyAggregation):
    """SecAgg+ around a sum-aggregating strategy (Bell et al. 2020, arXiv:2009.05807).

    Parameters
    ----------
    inner : SumAggregator
        Samples the clients and applies the FedAvg step to the unmasked sum.
    method, exact_under_sum, allow_inexact, stage_timeout
        See :class:`~strategies.sum_only.SumOnlyAggregation`.
    train_timeout : float
        Seconds to wait in the masked-input stage, which includes local training.
    clipping_range : float
        ``c``: every coordinate of a client's update must lie in ``[-c, c]``.
    bits : int
        Modulus exponent ``b`` of ``Z_{2^b}``; the overflow bound is checked per round.
    degree, threshold : int or None
        Neighbour-graph ``k`` and Shamir threshold ``t`` (``None``: ``O(log n)`` and
        ``floor(k/2) + 1``).
    max_weight : int
        Largest client weight (number of training examples) accepted.
    on_overflow : {"error", "clip"}
        A coordinate outside ``[-c, c]``: the client refuses (default), or clips and
        reports the count, which the server records per round.
    adversary : {"malicious", "semi-honest"}
        ``"malicious"`` (default): signed keys and the consistency round; every node
        needs a roster. ``"semi-honest"``: the four-stage protocol.
    """

    wrapper_name = "SecureAggregation"

    def __init__(
        self,
        inner: SumAggregator,
        *,
        method: str,
        exact_under_sum: bool,
        clipping_range: float,
        bits: int = 32,
        degree: int | None = None,
        threshold: int | None = None,
        max_weight: int = 2**16,
        on_overflow: Literal["error", "clip"] = "error",
        allow_inexact: bool = False,
        stage_timeout: float = 120.0,
        train_timeout: float = 3600.0,
        adversary: Literal["malicious", "semi-honest"] = "malicious",
    ) -> None:
        super().__init__(inner, method=method, exact_under_sum=exact_under_sum,
                         allow_inexact=allow_inexact, stage_timeout=stage_timeout)
        if train_timeout <= 0:
            raise ConfigError(f"train_timeout must be > 0, got {train_timeout}")
        self.train_timeout = train_timeout
        self._train: dict[int, RecordDict] = {}
        if max_weight < 1:
            raise ConfigError(f"max_weight must be >= 1, got {max_weight}")
        if adversary not in ADVERSARIES:
            raise ConfigError(f"adversary must be one of {ADVERSARIES}, got {adversary!r}")
        self.adversary = adversary
        self.clipping_range = clipping_range
        self.bits = bits
        self.degree = degree
        self.threshold = threshold
        self.max_weight = max_weight
        self.on_overflow = on_overflow
        self._config: SecAggConfig | None = None
        self._server: SecAggServer | None = None
        self._ids: dict[int, int] = {}
        # fail now, not in round 1, on an invalid combination
        self.config_for(int(getattr(inner, "clients_per_round", 2)), 1)

    def config_for(self, num_clients: int, vector_length: int,
                   round_id: int = 0) -> SecAggConfig:
        """The SecAgg+ config of a round with ``num_clients`` and ``vector_length``."""
        return make_config(num_clients, vector_length, self.clipping_range, self.bits,
                           degree=self.degree, threshold=self.threshold,
                           max_weight=self.max_weight, on_overflow=self.on_overflow,
                           round_id=round_id)

    def sensitivity_slack(self) -> float:
        """How far (L2) one client's contribution to this round's sum can be from its
        exact update: ``sqrt(d) · step · max_weight``.

        Stochastic rounding moves each of the ``d`` scaled coordinates by less than one
        grid step ``2c / q_max`` (Bell et al. 2020, Sec. 5), and the sum is scaled back by
        ``max_weight``. User-level DP adds this to the clipping norm when it sizes the
        noise (Kairouz et al. 2021, arXiv:2102.06387, do the same for their discretised
        Gaussian). 0 before the first round.
        """
        if self._config is None:
            return 0.0
        q = self._config.quantization
        return math.sqrt(self._config.vector_length) * q.step * float(self.max_weight)

    # ----------------------------------------------------------------- setup
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample through the inner strategy; send each sampled node its SecAgg+ setup.

        The inner strategy's train messages (global payload and config) are kept and
        sent in the masked-input stage.
        """
        self._grid = grid
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        length = int(sum(np.size(v) for v in self.inner.global_payload.values()))
        length += len(self.secure_stats)  # statistics summed in the channel (sum_only)
        cfg = self.config_for(len(messages), length, round_id=server_round)
        self._config = cfg
        self._ids = {int(m.metadata.dst_node_id): i + 1 for i, m in enumerate(messages)}
        self._server = SecAggServer(cfg, list(self._ids.values()),
                                    malicious=self.adversary == "malicious")
        self._train = {int(m.metadata.dst_node_id): m.content for m in messages}
        out = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            record = ConfigRecord({"protocol": "secagg+", "stage": "setup",
                                   "client-id": self._ids[node], "adversary": self.adversary,
                                   **config_to_dict(cfg)})
            out.append(Message(content=RecordDict({PROTOCOL_RECORD: record}),
                               message_type=msg.metadata.message_type,
                               dst_node_id=node, group_id=msg.metadata.group_id))
        return out

    # --------------------------------------------------------------- stages
    def _collect(self, stage: str, replies: dict[int, Message],
                 bytes_up: dict[int, int]) -> list[Message]:
        """Decode and hand every stage reply to the server; drop bad ones with a reason."""
        assert self._server is not None
        good = []
        for node, msg in replies.items():
            try:
                if msg.has_error():
                    raise PayloadError(f"client reported an error: {msg.error.reason}")
                record = msg.content.config_records.get(PROTOCOL_RECORD)
                if record is None:
                    raise PayloadError(f"reply lacks the {PROTOCOL_RECORD!r} ConfigRecord")
                message = decode_message(record, _REPLY_KIND[stage])
                if message.sender != self._ids.get(node):
                    raise SecAggError(f"node {node} answered as client {message.sender}")
                self._server.receive(message)
                if stage == MASKED_INPUT:
                    self._observe(node, message.vector)
                    self._client_metrics(node, msg)
            except (PayloadError, SecAggError) as exc:
                self._reject(node, f"{STAGE_NAMES[stage]}: {exc}")
                continue
            bytes_up[node] = bytes_up.get(node, 0) + serialized_nbytes(record)
            good.append(msg)
        return good

    def _observe(self, node: int, masked: np.ndarray) -> None:
        """Hand a masked input, as received, to an observer that captures it."""
        observer = getattr(self.inner, "observer", None)
        stats = self.inner.current_stats
        hook = getattr(observer, "on_masked_reply", None)
        if hook is None or stats is None or self._config is None:
            return
        position = stats.sampled.index(node) if node in stats.sampled else -1
        hook(stats.server_round, position, node, masked,
             {"client_id": self._ids[node], "bits": self._config.bits,
              "vector_length": self._config.vector_length,
              "clipping_range": self._config.quantization.clipping_range})

    def _stage(self, server_round: int, stage: str, outgoing: dict[int, Any],
               bytes_up: dict[int, int]) -> list[Message]:
        node_of = {cid: node for node, cid in self._ids.items()}
        training = stage == MASKED_INPUT
        contents = {}
        for cid, message in outgoing.items():
            node = node_of[cid]
            record = ConfigRecord({"protocol": "secagg+", "stage": STAGE_NAMES[stage],
                                   "round-id": server_round, **encode_message(message)})
            base = dict(self._train[node]) if training else {}
            contents[node] = RecordDict({**base, PROTOCOL_RECORD: record})
        replies = self._send(server_round, contents, STAGE_NAMES[stage],
                             timeout=self.train_timeout if training else None)
        return self._collect(stage, replies, bytes_up)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                             MetricRecord | None]:
        """Run the remaining stages and hand the unmasked sum to the inner strategy.

        Raises
        ------
        AggregationError
            (``DropoutError``) if too many clients dropped for the threshold, or fewer
            than the inner strategy's ``min_replies`` are in the sum.
        """
        if self._server is None or self._config is None:
            raise AggregationError("aggregate_train without configure_train")
        server, cfg = self._server, self._config
        bytes_up: dict[int, int] = {}
        stats = self.inner.current_stats
        by_node = {int(m.metadata.src_node_id): m for m in replies}
        for node in set(self._ids) - set(by_node):
            self._reject(node, "setup: no reply before the round timeout")
        self._collect(ADVERTISE_KEYS, {n: m for n, m in by_node.items() if n in self._ids},
                      bytes_up)
        trained: list[Message] = []
        try:
            self._stage(server_round, SHARE_KEYS, server.broadcast_keys(), bytes_up)
            trained = self._stage(server_round, MASKED_INPUT, server.route_shares(),
                                  bytes_up)
            if server.malicious:
                self._stage(server_round, CONSISTENCY, server.request_consistency(), bytes_up)
            self._stage(server_round, UNMASK, server.request_unmask(), bytes_up)
            result = server.finish()
        except SecAggError as exc:
            self._note(secagg_survivors=server.survivors)
            if stats is not None:
                stats.bytes_up = bytes_up
            rejected = stats.rejected if stats is not None else {}
            reasons = "; ".join(f"node {n}: {r}" for n, r in sorted(rejected.items()))
            raise AggregationError(f"round {server_round}: secure aggregation failed: "
                                   f"{exc}. Rejected: {reasons or 'none'}") from None
        finally:
            self._server = None
            self._train = {}
        node_of = {cid: node for node, cid in self._ids.items()}
        contributors = [node_of[cid] for cid in result.survivors]
        assert result.weight_sum is not None
        values, summed = self.split_stats(result.values, self.clipping_range,
                                          len(contributors))
        flat_sum = values * float(self.max_weight)
        layout = [(k, np.shape(v)) for k, v in sorted(self.inner.global_payload.items())]
        update_sum = unflatten(flat_sum, layout)
        if stats is not None:
            stats.bytes_up = bytes_up
        self._note(
            secure="secagg+",
            secagg_adversary=self.adversary,
            secagg_survivors={STAGE_NAMES[s]: len(ids) for s, ids in server.survivors.items()},
            secagg_degree=cfg.graph.degree,
            secagg_threshold=cfg.graph.threshold,
            secagg_bits=cfg.bits,
            secagg_clipped=summed.get("secure-clipped"),  # summed masked, or not sent
            exactness=self.exactness,
        )
        return self.inner.aggregate_from_sum(server_round, update_sum,
                                             float(result.weight_sum), contributors,
                                             MetricRecord({**mean_metrics(trained), **summed}))
