"""The ``[report]`` table: which per-client statistics may leave a client, and how.

::

    [report]
    client_stats = "auto"          # "auto" | "clear" | "off" | "noised" | "secure-sum"
    stats_noise_multiplier = 10.0  # "noised": Gaussian noise std / sensitivity
    loss_bound = 10.0              # per-example loss clipped to [0, loss_bound]

``auto`` resolves to ``clear`` in a plaintext run (no ``[dp]``, ``[user_dp]`` or
``[secure]``) and to ``off`` in every private run. Which choice is sound in which mode
is decided by :func:`securefed.app.egress.resolve_client_stats` (one table, one place);
a choice without a sound mechanism in the run's mode is a ConfigError naming the valid
ones. See ``docs/privacy.md`` ("What leaves a client").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securefed.config_check import require
from securefed.exceptions import UnknownNameError

__all__ = ["CLIENT_STATS", "ReportConfig"]

CLIENT_STATS = ("auto", "clear", "off", "noised", "secure-sum")
"""Valid ``[report] client_stats`` values."""


@dataclass(frozen=True)
class ReportConfig:
    """``[report]``: per-client statistics (see the module docstring)."""

    client_stats: str = "auto"
    stats_noise_multiplier: float = 10.0
    loss_bound: float = 10.0

    def __post_init__(self) -> None:
        if self.client_stats not in CLIENT_STATS:
            raise UnknownNameError("[report] client_stats", str(self.client_stats),
                                   CLIENT_STATS)
        require(math.isfinite(self.stats_noise_multiplier) and self.stats_noise_multiplier > 0,
                "report", "stats_noise_multiplier", self.stats_noise_multiplier,
                "must be a finite number > 0")
        require(math.isfinite(self.loss_bound) and self.loss_bound > 0, "report",
                "loss_bound", self.loss_bound, "must be a finite number > 0")
