"""The ``[user_dp]`` table: user-level (central) DP on the server, with a hard budget.

::

    [user_dp]
    clipping = "none"          # "none" | "server-fixed" | "client-fixed"
                               # | "server-adaptive" | "client-adaptive"
    noise_multiplier = 0.0     # z > 0, or 0: calibrate z so that [federation] rounds
                               # releases stay within (target_epsilon, delta)
    target_epsilon = 8.0
    delta = 1e-5               # per user; keep it below 1 / [data] num_clients
    clipping_norm = 0.1        # C (the initial C with adaptive clipping)
    accountant = "rdp"         # "rdp" | "prv" | "pld" (upper bounds; "gdp" is refused)
    budget_epsilon = 0.0       # the server refuses a round that would exceed it (0: target)
    sampling = "poisson"       # "poisson": each client joins a round with probability
                               #   q = clients_per_round / num_clients (amplified)
                               # "fixed": exactly clients_per_round a round, accounted
                               #   without sampling amplification (q = 1)
    on_missing = "error"       # "error": fewer replies than sampled stops the run
                               # "fixed-denominator": divide by the expected count anyway
                               #   (McMahan et al. 2018), which keeps the accounting valid
    target_quantile = 0.5      # adaptive: fraction of updates to leave unclipped
    clip_learning_rate = 0.2   # adaptive: geometric step of C (Andrew et al. 2021)
    clipped_count_stddev = 0.0 # adaptive: sigma_b of the clipped count (0: expected / 20)
    randomness = "secure"      # "secure" (OS CSPRNG, no seed) | "seeded" (experiment seed)

DP-FedAvg: McMahan et al. 2018 (arXiv:1710.06963); adaptive clipping: Andrew et al. 2021
(arXiv:1905.03871). See ``docs/privacy.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securefed.config_check import require
from securefed.exceptions import UnknownNameError

__all__ = ["USER_DP_CLIPPING", "UserDPConfig"]

USER_DP_CLIPPING = ("none", "server-fixed", "client-fixed", "server-adaptive",
                    "client-adaptive")
"""Valid ``[user_dp] clipping`` values (``none`` disables user-level DP)."""

_SAMPLING = ("poisson", "fixed")
_ON_MISSING = ("error", "fixed-denominator")
_RANDOMNESS = ("secure", "seeded")


def _need(cond: bool, key: str, value: object, need: str) -> None:
    require(cond, "user_dp", key, value, need)


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@dataclass(frozen=True)
class UserDPConfig:
    """``[user_dp]``: user-level DP of the released global adapters (see the module)."""

    clipping: str = "none"
    noise_multiplier: float = 0.0
    target_epsilon: float = 8.0
    delta: float = 1e-5
    clipping_norm: float = 0.1
    accountant: str = "rdp"
    budget_epsilon: float = 0.0
    sampling: str = "poisson"
    on_missing: str = "error"
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float = 0.0
    randomness: str = "secure"

    def __post_init__(self) -> None:
        if self.clipping not in USER_DP_CLIPPING:
            raise UnknownNameError("[user_dp] clipping", str(self.clipping), USER_DP_CLIPPING)
        _need(_finite_positive(self.target_epsilon), "target_epsilon", self.target_epsilon,
              "must be a finite number > 0")
        _need(math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0,
              "noise_multiplier", self.noise_multiplier, ">= 0 (0 = calibrate)")
        _need(0 < self.delta < 1, "delta", self.delta, "must be in (0, 1)")
        _need(_finite_positive(self.clipping_norm), "clipping_norm", self.clipping_norm,
              "must be a finite number > 0")
        _need(self.budget_epsilon >= 0, "budget_epsilon", self.budget_epsilon,
              ">= 0 (0 = target_epsilon)")
        _need(self.sampling in _SAMPLING, "sampling", self.sampling,
              f"must be one of {', '.join(_SAMPLING)}")
        _need(self.on_missing in _ON_MISSING, "on_missing", self.on_missing,
              f"must be one of {', '.join(_ON_MISSING)}")
        _need(0 <= self.target_quantile <= 1, "target_quantile", self.target_quantile,
              "must be in [0, 1]")
        _need(_finite_positive(self.clip_learning_rate), "clip_learning_rate",
              self.clip_learning_rate, "must be a finite number > 0")
        _need(math.isfinite(self.clipped_count_stddev) and self.clipped_count_stddev >= 0,
              "clipped_count_stddev", self.clipped_count_stddev,
              ">= 0 (0 = expected clients per round / 20)")
        _need(self.randomness in _RANDOMNESS, "randomness", self.randomness,
              f"must be one of {', '.join(_RANDOMNESS)}")
        from securefed.privacy.accountants import check_budget_accountant

        # UnknownNameError, or ConfigError for an approximation (gdp), naming the valid ones
        check_budget_accountant(self.accountant, "[user_dp] accountant")

    @property
    def enabled(self) -> bool:
        """Whether the server releases user-level DP aggregates."""
        return self.clipping != "none"

    @property
    def adaptive(self) -> bool:
        """Whether the clipping norm adapts (Andrew et al. 2021)."""
        return self.clipping.endswith("adaptive")

    @property
    def client_side(self) -> bool:
        """Whether clients clip their own updates (needed under secure aggregation)."""
        return self.clipping.startswith("client")

    @property
    def budget(self) -> float:
        """The user-level epsilon budget (``budget_epsilon``, or ``target_epsilon``)."""
        return self.budget_epsilon or self.target_epsilon
