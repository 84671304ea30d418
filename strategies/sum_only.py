"""Common ground of the sum-only wrappers: secure aggregation and CKKS aggregation.

Under secure aggregation (Bonawitz et al. 2017; Bell et al. 2020, arXiv:2009.05807) or
additively homomorphic encryption the server learns only the **sum** of the clients'
(weight-scaled) updates and the sum of their weights. A wrapper strategy runs the
cryptographic exchange through the grid and hands the inner strategy that sum via
``inner.aggregate_from_sum``; evaluation passes straight through.

Exactness rule
--------------
A weighted mean computed from plain sums is the intended update only for methods whose
aggregation is linear in the payload (``exact_under_sum``). For LoRA and FeDeRA the
factor-wise mean of ``A`` and ``B`` is not the mean of ``B·A`` (FFA-LoRA, arXiv
2403.12313; FedEx-LoRA, arXiv 2410.09432), so the wrappers refuse such a method unless
the config opts in to the inexact mean (``[secure] allow_inexact = true``, reported in
the summary) or sends the exact dense product (``[federation] payload_form = "dense"``).

Statistics in the channel
-------------------------
:class:`SecureStats` appends per-client statistics (the clip count, train loss and
accuracy: ``securefed.app.egress.secure_stat_names``) to the vector a client masks or
encrypts, each mapped to ``[0, c]``; the server splits them off the *sum* and learns
only their total. A client never sends them in the clear under a secure mode.

This module is numpy-only; it never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from securefed.exceptions import AggregationError, ConfigError, PayloadError
from strategies.adapter_fedavg import TrainRoundStats

__all__ = ["SecureStats", "SumAggregator", "SumOnlyAggregation", "check_exactness"]

log = logging.getLogger(__name__)

#: Name of the ConfigRecord that carries a wrapper's protocol fields in both directions.
PROTOCOL_RECORD = "secure"


@dataclass(frozen=True)
class SecureStats:
    """Per-client statistics summed inside the secure channel (see the module).

    Each statistic ``v`` with range ``[0, B]`` travels as ``clip(v / B, 0, 1) · c``
    (``c`` the clipping range, so it lies where update coordinates lie); the server
    recovers ``B / c`` times the sum. ``secure-clipped`` travels as the fraction of the
    update's coordinates that were clipped and comes back as the total count.

    Parameters
    ----------
    names : tuple of str
        The statistics, in vector order (empty: none).
    loss_bound : float
        ``B`` of ``train-loss`` (per-example losses above it count as ``B``).
    """

    names: tuple[str, ...] = ()
    loss_bound: float = 10.0

    KNOWN = ("secure-clipped", "train-loss", "train-accuracy")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.names) - set(self.KNOWN))
        if unknown or len(set(self.names)) != len(self.names):
            raise ConfigError(f"secure statistics {list(self.names)}: each must be one of "
                              f"{', '.join(self.KNOWN)}, at most once")
        if not (np.isfinite(self.loss_bound) and self.loss_bound > 0):
            raise ConfigError(f"loss_bound must be a finite number > 0, got {self.loss_bound}")

    def __len__(self) -> int:
        return len(self.names)

    def _bound(self, name: str) -> float:
        return self.loss_bound if name == "train-loss" else 1.0

    def encode(self, values: Mapping[str, Any], clipping_range: float) -> np.ndarray:
        """The coordinates one client appends (a missing or non-finite value is refused).

        Raises
        ------
        PayloadError
            If a statistic is missing or not a finite number.
        """
        out = np.zeros(len(self.names))
        for i, name in enumerate(self.names):
            value = values.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    np.isfinite(value)):
                raise PayloadError(f"statistic {name!r} to sum securely is {value!r}")
            out[i] = min(max(float(value) / self._bound(name), 0.0), 1.0) * clipping_range
        return out

    def split(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(update part, statistics part)`` of a summed vector."""
        cut = values.size - len(self.names)
        return values[:cut], values[cut:]

    def decode(self, sums: np.ndarray, clipping_range: float, contributors: int,
               update_length: int) -> dict[str, float]:
        """Totals and means: ``secure-clipped`` summed, loss and accuracy averaged."""
        out: dict[str, float] = {}
        for name, total in zip(self.names, np.asarray(sums, dtype=np.float64), strict=True):
            value = float(total) / clipping_range * self._bound(name)
            if name == "secure-clipped":
                out[name] = float(round(value * update_length))
            else:
                out[name] = value / max(contributors, 1)
        return out


class SumAggregator(Protocol):
    """What a sum-only wrapper needs from its inner strategy (``AdapterFedAvg``)."""

    min_replies: int

    @property
    def global_payload(self) -> dict[str, np.ndarray]:
        """The global payload of the current training round."""

    @property
    def current_stats(self) -> TrainRoundStats | None:
        """The statistics of the training round in progress."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample clients and build their train messages."""

    def aggregate_from_sum(self, server_round: int, update_sum: Mapping[str, np.ndarray],
                           weight_sum: float, contributors: list[int],
                           metrics: MetricRecord) -> tuple[ArrayRecord, MetricRecord]:
        """Finish the round from the weighted sum of updates."""

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Build federated-evaluation messages."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate federated-evaluation replies."""


def check_exactness(method: str, exact_under_sum: bool, allow_inexact: bool,
                    wrapper: str) -> str:
    """Apply the exactness rule; return ``"exact"`` or ``"inexact-allowed"``.

    Raises
    ------
    ConfigError
        If the method's mean is inexact under sums and the config did not opt in.
    """
    if exact_under_sum:
        return "exact"
    if allow_inexact:
        log.warning("%s: method %r is aggregated factor-wise; the mean is inexact "
                    "(allow_inexact = true)", wrapper, method)
        return "inexact-allowed"
    raise ConfigError(
        f"{wrapper}: method {method!r} is not exact under sum-only aggregation "
        "(the factor-wise mean of LoRA A and B is not the mean of B·A). Choose one: "
        "[federation] payload_form = \"dense\" (clients send B·A; exact, more bytes), "
        "[secure] allow_inexact = true (inexact mean, reported in the summary), "
        "or an exact method such as 'ffa-lora'"
    )


def mean_metrics(replies: Iterable[Message], key: str = "metrics") -> MetricRecord:
    """Unweighted mean of the numeric client metrics (the weights stay secret)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for msg in replies:
        record = msg.content.metric_records.get(key)
        for name, value in (record or {}).items():
            if isinstance(value, int | float) and np.isfinite(value):
                sums[name] = sums.get(name, 0.0) + float(value)
                counts[name] = counts.get(name, 0) + 1
    return MetricRecord({k: sums[k] / counts[k] for k in sums})


class SumOnlyAggregation(Strategy):
    """Base of :class:`SecureAggregation` and :class:`HomomorphicAggregation`.

    Parameters
    ----------
    inner : SumAggregator
        The strategy that samples clients and turns the sum into the new global
        payload (:class:`~strategies.adapter_fedavg.AdapterFedAvg`).
    method : str
        The tuning method's name (for messages and the summary).
    exact_under_sum : bool
        The method's declared semantics.
    allow_inexact : bool
        Opt in to an inexact factor-wise mean.
    stage_timeout : float
        Seconds to wait for the replies of each protocol stage after training.
    """

    wrapper_name = "sum-only aggregation"

    def __init__(self, inner: SumAggregator, *, method: str, exact_under_sum: bool,
                 allow_inexact: bool = False, stage_timeout: float = 120.0) -> None:
        if stage_timeout <= 0:
            raise ConfigError(f"stage_timeout must be > 0, got {stage_timeout}")
        self.inner = inner
        self.method = method
        self.exactness = check_exactness(method, exact_under_sum, allow_inexact,
                                         self.wrapper_name)
        self.stage_timeout = stage_timeout
        self._grid: Grid | None = None
        self.secure_stats = SecureStats()

    def use_secure_stats(self, stats: SecureStats) -> None:
        """Expect ``stats`` appended to every client's vector (set before round 1)."""
        self.secure_stats = stats

    def split_stats(self, values: np.ndarray, clipping_range: float,
                    contributors: int) -> tuple[np.ndarray, MetricRecord]:
        """Split the summed statistics off a decoded sum: ``(update sum, metrics)``.

        The metrics hold the statistics' totals or means (:meth:`SecureStats.decode`),
        also noted in the round's statistics.
        """
        update, sums = self.secure_stats.split(np.asarray(values, dtype=np.float64))
        stats = self.secure_stats.decode(sums, clipping_range, contributors, update.size)
        if stats:
            self._note(secure_stats=stats)
        return update, MetricRecord(dict(stats))

    # ------------------------------------------------------------- messaging
    def _send(self, server_round: int, contents: Mapping[int, RecordDict],
              stage: str, timeout: float | None = None) -> dict[int, Message]:
        """Send one protocol stage; return ``{node: reply}`` of the nodes that replied
        within ``timeout`` (default ``stage_timeout``)."""
        if self._grid is None:
            raise AggregationError("protocol stage before configure_train")
        msgs = [Message(content=c, message_type=MessageType.TRAIN, dst_node_id=node,
                        group_id=str(server_round)) for node, c in contents.items()]
        replies = self._grid.send_and_receive(msgs, timeout=timeout or self.stage_timeout)
        out: dict[int, Message] = {}
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if node in contents:
                out[node] = reply
        missing = sorted(set(contents) - set(out))
        if missing:
            log.warning("round %d, %s: no reply from nodes %s", server_round, stage, missing)
        return out

    def _reject(self, node: int, reason: str) -> None:
        stats = self.inner.current_stats
        if stats is not None:
            stats.rejected[node] = reason
        log.warning("rejected node %d: %s", node, reason)

    def _client_metrics(self, node: int, msg: Message) -> None:
        """Pass one client's plaintext metrics (DP ledger fields) to the inner observer."""
        stats = self.inner.current_stats
        report = getattr(self.inner, "report_client_metrics", None)
        if report is not None and stats is not None:
            report(stats.server_round, node, msg)

    def _note(self, **extra: Any) -> None:
        stats = self.inner.current_stats
        if stats is not None:
            stats.extra.update(extra)

    # ----------------------------------------------------------------- state
    def _own_state(self) -> dict[str, Any]:
        """The wrapper's state between rounds (JSON-serialisable); none by default."""
        return {}

    def _load_own_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`_own_state` output."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state of the wrapper and its inner strategy (crash resume).

        A round interrupted mid-protocol is not resumed: its secrets lived in the
        clients' state for that round only, so the round is run again.
        """
        return {"wrapper": self.wrapper_name, "inner": self.inner.state_dict(),
                "own": self._own_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a mismatched wrapper is a ConfigError)."""
        try:
            if state["wrapper"] != self.wrapper_name:
                raise ConfigError(f"state of {state['wrapper']!r} cannot be loaded into "
                                  f"{self.wrapper_name!r}")
            inner, own = state["inner"], state["own"]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed {self.wrapper_name} state: {exc!r}") from None
        self.inner.load_state_dict(inner)
        self._load_own_state(own)

    # ------------------------------------------------------------ delegation
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Federated evaluation is unchanged: delegated to the inner strategy."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        """Delegated to the inner strategy."""
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Log the wrapper and the inner strategy."""
        log.info("%s around %s (method %s, %s)", self.wrapper_name,
                 type(self.inner).__name__, self.method, self.exactness)
