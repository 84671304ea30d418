"""What the server saw in a training round, and who is told about it.

:class:`TrainRoundStats` is filled by :class:`strategies.adapter_fedavg.AdapterFedAvg`
(and the wrappers around it) and handed to a :class:`RoundObserver` (the run recorder,
the attack harness) after every round. Nodes are named by Flower node id (random in
every run); ``partitions`` gives each sampled node's partition id, the stable identity
(:mod:`strategies.identities`).

Optional observer hooks, called when present: ``on_client_metrics(round, node,
metrics)`` (an accepted reply's DP ledger fields), ``on_identities(partitions,
excluded)`` (the ``{node: partition id}`` map and ``{node: reason}`` of excluded nodes,
whenever they change, before the round that uses them) and, under SecAgg+,
``on_masked_reply``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["RoundObserver", "TrainRoundStats"]


@dataclass
class TrainRoundStats:
    """What the server saw in one training round."""

    server_round: int
    sampled: list[int]
    #: ``{node id: partition id}`` of the sampled nodes (None: not identified).
    partitions: dict[int, int | None] = field(default_factory=dict)
    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down_per_client: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: What a wrapper (secure aggregation, CKKS) adds: survivors per stage, clip counts.
    extra: dict[str, Any] = field(default_factory=dict)


class RoundObserver(Protocol):
    """Receives per-round statistics from :class:`AdapterFedAvg`."""

    def on_train_round(self, stats: TrainRoundStats) -> None:
        """Called after a training round was aggregated (or refused)."""

    def on_evaluate_round(self, server_round: int, metrics: Mapping[str, float],
                          rejected: Mapping[int, str]) -> None:
        """Called after federated evaluation was aggregated."""

    def on_reply(self, server_round: int, position: int, node: int,
                 payload: Mapping[str, np.ndarray], weight: float,
                 global_payload: Mapping[str, np.ndarray]) -> None:
        """Called with every valid reply, exactly as the server received it, before
        aggregation; ``position`` is the node's index in the round's sample. This is
        the honest-but-curious server's view (plaintext aggregation), which the
        attack harness captures."""
