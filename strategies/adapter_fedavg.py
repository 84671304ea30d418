"""``AdapterFedAvg``: FedAvg over adapter payloads, by key, with strict reply checks.

FedAvg (McMahan et al., arXiv 1602.05629) weighted by each client's number of training
examples, applied to the PEFT payload a client sends (only the trainable adapter
tensors, keyed by name). Differences from Flower's ``FedAvg``:

* exactly ``clients_per_round`` nodes are sampled each round, from a generator that is
  passed in (seeded for experiments), **by partition id**: the nodes are identified
  first (:mod:`strategies.identities`), partition ids are drawn
  (:mod:`strategies.sampling`) and mapped to node ids, and replies are summed in
  partition-id order, so a seed gives the same rounds whatever node ids Flower drew;
* every reply is validated (:mod:`strategies.replies`) *before* it can touch the
  global adapter: its records, a weight that is an int in ``[1, max_weight]``, finite
  scalar metrics, one reply per sampled node, and the payload against the global
  payload's spec (keys, shapes, dtypes, finite values, size, all sizes checked before
  decoding); a bad reply is dropped with a logged reason and counted;
* a weighted mean that is not finite is refused; the global adapter stays unchanged;
* if fewer than ``min_replies`` valid replies remain, the round ends the run with an
  :class:`~securefed.exceptions.AggregationError` naming every rejection — never a
  silently smaller aggregate;
* per-round statistics (bytes up and down per client, rejections) go to an observer.

Composition: this is the innermost strategy. Wrappers for secure aggregation and
user-level DP (later issues) wrap it and pass on the methods they do not change.
This module is numpy-only; it never imports torch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from securefed.exceptions import AggregationError, ConfigError, PayloadError
from securefed.privacy.noise import RandomSource
from strategies.aggregate import weighted_mean_by_key, weighted_metric_means
from strategies.identities import NodeIdentities
from strategies.records import (
    ARRAYS_KEY,
    content_payload_nbytes,
    payload_to_record,
    record_to_payload,
    wire_nbytes,
    write_payload,
)
from strategies.replies import (
    METRICS_KEY,
    WEIGHT_KEY,
    check_eval_reply,
    check_train_reply,
    screen_replies,
)
from strategies.round_stats import RoundObserver, TrainRoundStats
from strategies.sampling import draw_fixed, draw_poisson
from strategies.validation import PayloadSpec, validate_payload

__all__ = ["AdapterFedAvg", "RoundObserver", "TrainRoundStats"]

log = logging.getLogger(__name__)

CONFIG_KEY = "config"


def _metric_dict(record: MetricRecord | None) -> dict[str, float]:
    """The scalar numbers of ``record`` as floats (lists and overflowing ints left out)."""
    out: dict[str, float] = {}
    for key, value in (record or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                out[key] = float(value)
            except OverflowError:
                continue
    return out


def _metric_record(values: Mapping[str, float]) -> MetricRecord:
    record = MetricRecord()
    for key, value in values.items():
        record[key] = value
    return record


class AdapterFedAvg(FedAvg):
    """Example-weighted FedAvg over keyed adapter payloads with reply validation.

    Parameters
    ----------
    clients_per_round : int
        Nodes sampled for training each round.
    min_replies : int
        Valid replies a training round needs; fewer raise :class:`AggregationError`.
    evaluate_clients : int
        Nodes sampled for federated evaluation each round (0 disables it).
    max_payload_bytes : int
        Upper bound on a reply's raw tensor bytes.
    rng : numpy.random.Generator
        Source of client sampling (seed it for reproducible experiments).
    observer : RoundObserver, optional
        Receives per-round statistics.
    node_wait_s : float
        How long to wait for enough nodes to connect before failing.
    poisson_population : int
        0: sample exactly ``clients_per_round`` nodes a round. ``N > 0``: Poisson
        sampling, each of the ``N`` nodes joins a training round independently with
        probability ``q = clients_per_round / N`` (what user-level DP accounting with
        sampling amplification assumes; McMahan et al. 2018, arXiv:1710.06963). A
        round that draws fewer than ``min_replies`` nodes raises AggregationError.
    uniform_weights : bool
        Weigh every client 1 instead of its example count (user-level DP: each user's
        clipped update counts equally). Under a sum-only wrapper the weight sum must
        then equal the number of contributors.
    sampling_source : RandomSource, optional
        Draws the Poisson mask (the ChaCha20 CSPRNG in production: amplification by
        sampling assumes the sample is secret); ``rng`` otherwise.
    max_weight : int
        A training reply's ``num-examples`` must be an int in ``[1, max_weight]``
        (``[secure] max_weight``; 1 under user-level DP); anything else is rejected.
    max_eval_weight : int
        The same bound for federated-evaluation replies (validation examples).
    num_partitions : int, optional
        Valid partition ids are ``0 .. num_partitions - 1`` (``[data] num_clients``);
        a node claiming another is excluded (:mod:`strategies.identities`).
    identities : NodeIdentities, optional
        The node -> partition map to use (default: a fresh one over
        ``num_partitions``).
    """

    def __init__(
        self,
        *,
        clients_per_round: int,
        min_replies: int,
        evaluate_clients: int = 0,
        max_payload_bytes: int = 512 * 2**20,
        rng: np.random.Generator,
        observer: RoundObserver | None = None,
        node_wait_s: float = 600.0,
        poisson_population: int = 0,
        uniform_weights: bool = False,
        sampling_source: RandomSource | None = None,
        max_weight: int = 65536,
        max_eval_weight: int = 2**31 - 1,
        num_partitions: int | None = None,
        identities: NodeIdentities | None = None,
    ) -> None:
        for name, bound in (("max_weight", max_weight), ("max_eval_weight", max_eval_weight)):
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {bound!r}")
        if poisson_population and poisson_population < clients_per_round:
            raise ConfigError(f"poisson_population {poisson_population} is smaller than "
                              f"clients_per_round {clients_per_round}")
        if clients_per_round < 1:
            raise ConfigError(f"clients_per_round must be >= 1, got {clients_per_round}")
        if not 1 <= min_replies <= clients_per_round:
            raise ConfigError(
                f"min_replies must be in [1, clients_per_round={clients_per_round}], "
                f"got {min_replies}"
            )
        if evaluate_clients < 0:
            raise ConfigError(f"evaluate_clients must be >= 0, got {evaluate_clients}")
        super().__init__(
            fraction_train=1.0,
            # unused (configure_evaluate samples evaluate_clients); 0.0 made Flower log a
            # misleading "fraction_evaluate is set to 0.0" warning
            fraction_evaluate=1.0,
            min_train_nodes=clients_per_round,
            min_evaluate_nodes=evaluate_clients,
            min_available_nodes=max(clients_per_round, evaluate_clients),
            weighted_by_key=WEIGHT_KEY,
            arrayrecord_key=ARRAYS_KEY,
            configrecord_key=CONFIG_KEY,
        )
        self.clients_per_round = clients_per_round
        self.min_replies = min_replies
        self.evaluate_clients = evaluate_clients
        self.max_payload_bytes = max_payload_bytes
        self.rng = rng
        self.sampling_source = sampling_source
        self.observer = observer
        self.node_wait_s = node_wait_s
        self.poisson_population = poisson_population
        self.uniform_weights = uniform_weights
        self.max_weight = max_weight
        self.max_eval_weight = max_eval_weight
        self.identities = identities or NodeIdentities(num_partitions)
        self._announced = -1
        self.spec: PayloadSpec | None = None
        self._global_sent: dict[str, np.ndarray] = {}
        self.history: list[TrainRoundStats] = []
        self._current: TrainRoundStats | None = None

    # -------------------------------------------------------------------- state
    STATE_VERSION = 1

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: sampling generator, payload spec, round history.

        With the global payload (checkpointed by the caller) this is what a crashed
        server needs to resume: the next rounds sample the same clients as an
        uninterrupted run would.
        """
        spec = None if self.spec is None else {
            "shapes": {k: list(v) for k, v in self.spec.shapes.items()},
            "dtypes": dict(self.spec.dtypes), "max_bytes": self.spec.max_bytes}
        return {
            "version": self.STATE_VERSION,
            "rng": self.rng.bit_generator.state,
            "spec": spec,
            "history": [dataclasses.asdict(h) for h in self.history],
            "sampling_source": None if self.sampling_source is None
            else self.sampling_source.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a malformed state is a ConfigError)."""
        try:
            if state["version"] != self.STATE_VERSION:
                raise ConfigError(f"unsupported AdapterFedAvg state version {state['version']}")
            rng = np.random.default_rng()
            rng.bit_generator.state = state["rng"]
            spec = state["spec"]
            history = [TrainRoundStats(**h) for h in state["history"]]
            sampling = state.get("sampling_source")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed AdapterFedAvg state: {exc}") from None
        self.rng = rng
        self.spec = None if spec is None else PayloadSpec(
            shapes={k: tuple(v) for k, v in spec["shapes"].items()},
            dtypes=spec["dtypes"], max_bytes=int(spec["max_bytes"]))
        self.history = history
        if self.sampling_source is not None and sampling:
            self.sampling_source.load_state_dict(sampling)

    # ------------------------------------------------------------------ sampling
    def _sample(self, grid: Grid, k: int) -> list[int]:
        """``k`` node ids: partition ids drawn with ``rng``, mapped to their nodes."""
        partitions = self.identities.wait_for(grid, k, self.node_wait_s)
        self._announce()
        return self._nodes(draw_fixed(self.rng, partitions, k))

    def _nodes(self, partitions: list[int]) -> list[int]:
        node_of = {p: n for n, p in self.identities.partitions().items()}
        return [node_of[p] for p in partitions]

    def _announce(self) -> None:
        """Tell the observer the node -> partition map when it changed."""
        ids = self.identities
        hook = getattr(self.observer, "on_identities", None)
        if hook is not None and ids.revision != self._announced:
            self._announced = ids.revision
            hook(ids.partitions(), ids.excluded())

    def _sample_train(self, grid: Grid, server_round: int) -> list[int]:
        if not self.poisson_population:
            return self._sample(grid, self.clients_per_round)
        partitions = self.identities.wait_for(grid, self.poisson_population, self.node_wait_s)
        self._announce()
        q = self.clients_per_round / self.poisson_population
        chosen = draw_poisson(self.rng, self.sampling_source,
                              partitions[:self.poisson_population], q)
        if len(chosen) < self.min_replies:
            raise AggregationError(
                f"round {server_round}: Poisson sampling (q = {q:.3g}) drew {len(chosen)} "
                f"clients, fewer than min_replies = {self.min_replies}; lower [federation] "
                "min_replies or raise clients_per_round")
        return self._nodes(chosen)

    def _messages(self, arrays: ArrayRecord, config: ConfigRecord, nodes: list[int],
                  message_type: str, server_round: int) -> list[Message]:
        config["server-round"] = server_round
        content = RecordDict({**write_payload(record_to_payload(arrays)), CONFIG_KEY: config})
        return [Message(content=content, message_type=message_type, dst_node_id=n,
                        group_id=str(server_round)) for n in nodes]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample ``clients_per_round`` nodes and send them the global payload."""
        if self.spec is None:
            self.spec = PayloadSpec.of(record_to_payload(arrays),
                                       max_bytes=self.max_payload_bytes)
        nodes = self._sample_train(grid, server_round)
        self._global_sent = record_to_payload(arrays)
        self._current = TrainRoundStats(
            server_round=server_round,
            sampled=nodes,
            partitions={n: self.identities.partition_of(n) for n in nodes},
            bytes_down_per_client=wire_nbytes(record_to_payload(arrays)),
            seconds=time.monotonic(),
        )
        return self._messages(arrays, config, nodes, MessageType.TRAIN, server_round)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample ``evaluate_clients`` nodes for federated evaluation."""
        if not self.evaluate_clients:
            return []
        nodes = self._sample(grid, self.evaluate_clients)
        return self._messages(arrays, config, nodes, MessageType.EVALUATE, server_round)

    # --------------------------------------------------------------- validation
    def _check_reply(self, msg: Message) -> tuple[dict[str, np.ndarray], float,
                                                  dict[str, float]]:
        """(payload, weight, metrics) of a valid train reply, else raise PayloadError
        (:func:`strategies.replies.check_train_reply`)."""
        assert self.spec is not None
        payload, weight, metrics = check_train_reply(msg, self.spec,
                                                     max_weight=self.max_weight)
        return payload, 1.0 if self.uniform_weights else float(weight), metrics

    def screen_train_replies(self, replies: Iterable[Message]) -> list[Message]:
        """The replies of this round's sampled nodes that replied exactly once.

        The others are recorded as rejected in the round's statistics. A wrapper that
        inspects replies before this strategy (user-level DP clipping) calls it first:
        once it drops one of two replies of a node, the duplicate is undetectable.
        """
        stats = self._current
        kept, rejected = screen_replies(replies, stats.sampled if stats is not None else [])
        if stats is not None:
            stats.rejected.update(rejected)
        return [msg for _, msg in kept]

    # -------------------------------------------------------------- aggregation
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, drop bad ones with a reason, average the rest by key.

        Raises
        ------
        AggregationError
            If fewer than ``min_replies`` valid replies remain.
        """
        stats = self._current or TrainRoundStats(server_round=server_round, sampled=[])
        started = stats.seconds
        payloads: list[dict[str, np.ndarray]] = []
        weights: list[float] = []
        client_metrics: list[dict[str, float]] = []
        kept, screened = screen_replies(replies, stats.sampled)
        kept.sort(key=lambda item: self.identities.sort_key(item[0]))  # bit-identical sums
        stats.rejected.update(screened)
        for node in screened:
            log.warning("round %d: rejected reply from node %d: %s", server_round, node,
                        screened[node])
        for node, msg in kept:
            try:
                payload, weight, reported = self._check_reply(msg)
            except PayloadError as exc:
                stats.rejected[node] = str(exc)
                log.warning("round %d: rejected reply from node %d: %s", server_round, node,
                            exc)
                continue
            stats.bytes_up[node] = content_payload_nbytes(msg.content)
            stats.accepted.append(node)
            self.report_client_metrics(server_round, node, reported)
            if self.observer is not None:
                position = stats.sampled.index(node) if node in stats.sampled else -1
                self.observer.on_reply(server_round, position, node, payload, weight,
                                       self._global_sent)
            payloads.append(payload)
            weights.append(weight)
            client_metrics.append(reported)
        replied = {node for node, _ in kept} | set(screened)
        for node in stats.sampled:
            if node not in replied and node not in stats.rejected:
                stats.rejected[node] = "no reply before the round timeout"
        stats.seconds = time.monotonic() - started if started else 0.0
        if len(payloads) < self.min_replies:
            self._finish(stats)
            reasons = "; ".join(f"node {n}: {r}" for n, r in sorted(stats.rejected.items()))
            raise AggregationError(
                f"round {server_round}: {len(payloads)} valid replies of "
                f"{len(stats.sampled)} sampled, {self.min_replies} required. "
                f"Rejected: {reasons or 'none'}"
            )
        try:
            mean = weighted_mean_by_key(payloads, weights)
            assert self.spec is not None
            validate_payload(mean, self.spec)
        except (AggregationError, PayloadError) as exc:
            self._finish(stats)
            raise AggregationError(f"round {server_round}: aggregate rejected ({exc}); the "
                                   "global adapter is unchanged") from None
        metrics = _metric_record(weighted_metric_means(client_metrics, weights,
                                                       exclude=WEIGHT_KEY))
        metrics["rejected-replies"] = len(stats.rejected)
        stats.metrics = _metric_dict(metrics)
        self._finish(stats)
        return payload_to_record(mean), metrics

    def report_client_metrics(self, server_round: int, node: int,
                              metrics: Message | Mapping[str, float]) -> None:
        """Hand one accepted reply's metrics, the DP ledger fields, to the observer.

        ``metrics`` is what :func:`strategies.replies.check_train_reply` returned, or
        the reply itself (a sum-only wrapper): then only its finite numbers are passed.
        """
        hook = getattr(self.observer, "on_client_metrics", None)
        if hook is None:
            return
        if isinstance(metrics, Message):
            record = (None if metrics.has_error()
                      else metrics.content.metric_records.get(METRICS_KEY))
            metrics = {k: v for k, v in _metric_dict(record).items() if np.isfinite(v)}
        hook(server_round, node, dict(metrics))

    # --------------------------------------------------- sum-only aggregation
    @property
    def global_payload(self) -> dict[str, np.ndarray]:
        """The global payload sent in the current training round."""
        return self._global_sent

    @property
    def current_stats(self) -> TrainRoundStats | None:
        """Statistics of the training round in progress (for wrappers to fill in)."""
        return self._current

    def aggregate_from_sum(
        self,
        server_round: int,
        update_sum: Mapping[str, np.ndarray],
        weight_sum: float,
        contributors: list[int],
        metrics: MetricRecord,
    ) -> tuple[ArrayRecord, MetricRecord]:
        """Finish a round from the weighted **sum** of the clients' updates.

        A sum-only wrapper (secure aggregation, homomorphic encryption) learns only
        ``update_sum = sum_i w_i (x_i - g)`` over the contributing clients and
        ``weight_sum = sum_i w_i``; the FedAvg step is then ``g + update_sum /
        weight_sum`` (McMahan et al., arXiv 1602.05629), which is what this method
        returns, after checking it against the payload spec.

        Raises
        ------
        AggregationError
            If fewer than ``min_replies`` clients contributed, the weight sum is not
            positive, or the result is malformed or non-finite.
        """
        stats = self._current or TrainRoundStats(server_round=server_round, sampled=[])
        started = stats.seconds
        stats.accepted = self.identities.sorted_nodes(contributors)
        for node in stats.sampled:
            if node not in contributors and node not in stats.rejected:
                stats.rejected[node] = "not in the secure aggregate (dropped out)"
        stats.seconds = time.monotonic() - started if started else 0.0
        try:
            if len(contributors) < self.min_replies:
                raise AggregationError(
                    f"round {server_round}: {len(contributors)} clients in the aggregate, "
                    f"{self.min_replies} required"
                )
            if not np.isfinite(weight_sum) or weight_sum <= 0:
                raise AggregationError(f"round {server_round}: weight sum {weight_sum!r} <= 0")
            if self.uniform_weights and weight_sum != len(contributors):
                raise AggregationError(
                    f"round {server_round}: uniform weights expected, but the weight sum "
                    f"{weight_sum:g} differs from the {len(contributors)} contributors "
                    "(a client did not send weight 1)")
            new = {k: (np.asarray(self._global_sent[k], dtype=np.float64)
                       + np.asarray(update_sum[k], dtype=np.float64) / weight_sum
                       ).astype(self._global_sent[k].dtype)
                   for k in self._global_sent}
            assert self.spec is not None
            if set(update_sum) != set(self._global_sent):
                raise PayloadError(f"sum has keys {sorted(update_sum)}, expected "
                                   f"{sorted(self._global_sent)}")
            validate_payload(new, self.spec)
        except (PayloadError, KeyError, ValueError) as exc:
            self._finish(stats)
            raise AggregationError(f"round {server_round}: aggregate rejected: {exc}") from None
        except AggregationError:
            self._finish(stats)
            raise
        stats.metrics = _metric_dict(metrics)
        self._finish(stats)
        return payload_to_record(new), metrics

    def _finish(self, stats: TrainRoundStats) -> None:
        self.history.append(stats)
        self._current = None
        if self.observer is not None:
            self.observer.on_train_round(stats)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted mean of the clients' evaluation metrics."""
        values: list[dict[str, float]] = []
        weights: list[float] = []
        kept, rejected = screen_replies(replies, [])
        kept.sort(key=lambda item: self.identities.sort_key(item[0]))
        for node, msg in kept:
            try:
                weight, metrics = check_eval_reply(msg, max_weight=self.max_eval_weight)
            except PayloadError as exc:
                rejected[node] = str(exc)
                continue
            if weight == 0:
                continue  # the client holds no validation data: nothing to average
            values.append(metrics)
            weights.append(float(weight))
        aggregated = (_metric_record(weighted_metric_means(values, weights,
                                                           exclude=WEIGHT_KEY))
                      if values else None)
        if self.observer is not None:
            self.observer.on_evaluate_round(server_round, _metric_dict(aggregated), rejected)
        return aggregated
