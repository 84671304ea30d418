"""The ``[dp]`` table: sample-level DP-SGD on the clients, with a hard budget.

::

    [dp]
    mode = "none"            # "none" | "sample" (DP-SGD on every client, Abadi et al. 2016)
    target_epsilon = 8.0     # calibrate sigma so that [federation] rounds of local
                             # training stay within (target_epsilon, delta)
    noise_multiplier = 0.0   # > 0: use this sigma instead of calibrating
    delta = 1e-5
    max_grad_norm = 1.0      # per-example clipping bound C
    accountant = "rdp"       # "rdp" | "prv" | "pld" (upper bounds; "gdp" is refused)
    budget_epsilon = 0.0     # a client refuses a round that would exceed it (0: target)
    randomness = "secure"    # "secure" (OS CSPRNG, no seed) | "seeded" (experiment seed)
    clipping = "hooks"       # "hooks" (Opacus per-sample gradients) | "ghost" (ghost
                             # clipping: per-sample norms; less memory for `full`)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securefed.config_check import require
from securefed.exceptions import UnknownNameError

__all__ = ["DP_MODES", "DPConfig"]

DP_MODES = ("none", "sample")
"""Valid ``[dp] mode`` values."""

_RANDOMNESS = ("secure", "seeded")
_CLIPPING = ("ghost", "hooks")  # securefed.privacy.dpsgd.CLIPPING_MODES (no torch here)


def _need(cond: bool, key: str, value: object, need: str) -> None:
    require(cond, "dp", key, value, need)


@dataclass(frozen=True)
class DPConfig:
    """``[dp]``: sample-level DP-SGD (see the module docstring)."""

    mode: str = "none"
    target_epsilon: float = 8.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    budget_epsilon: float = 0.0
    randomness: str = "secure"
    clipping: str = "hooks"

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise UnknownNameError("[dp] mode", str(self.mode), DP_MODES)
        _need(math.isfinite(self.target_epsilon) and self.target_epsilon > 0,
              "target_epsilon", self.target_epsilon, "must be a finite number > 0")
        _need(math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0,
              "noise_multiplier", self.noise_multiplier, ">= 0 (0 = calibrate)")
        _need(0 < self.delta < 1, "delta", self.delta, "must be in (0, 1)")
        _need(math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0,
              "max_grad_norm", self.max_grad_norm, "must be a finite number > 0")
        _need(self.budget_epsilon >= 0, "budget_epsilon", self.budget_epsilon,
              ">= 0 (0 = target_epsilon)")
        _need(self.randomness in _RANDOMNESS, "randomness", self.randomness,
              f"must be one of {', '.join(_RANDOMNESS)}")
        _need(self.clipping in _CLIPPING, "clipping", self.clipping,
              f"must be one of {', '.join(_CLIPPING)}")
        from securefed.privacy.accountants import check_budget_accountant

        # UnknownNameError, or ConfigError for an approximation (gdp), naming the valid ones
        check_budget_accountant(self.accountant, "[dp] accountant")

    @property
    def enabled(self) -> bool:
        """Whether clients train with DP-SGD."""
        return self.mode != "none"

    @property
    def budget(self) -> float:
        """The per-client epsilon budget (``budget_epsilon``, or ``target_epsilon``)."""
        return self.budget_epsilon or self.target_epsilon
