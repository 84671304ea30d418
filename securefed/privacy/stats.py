"""Noised per-client statistics: the Gaussian mechanism on bounded sums.

With ``[report] client_stats = "noised"`` under ``[dp]``, a client releases its loss
and accuracy on a split only through this mechanism. Each example contributes the
vector ``v_i = (min(l_i, B) / B, c_i, 1)`` (clipped loss, correctness, count) to the
sum ``S = sum_i v_i``; adding or removing one example moves ``S`` by at most
``||v_i||_2 <= sqrt(3)``. The client releases ``S + N(0, (sigma sqrt 3)^2 I)``, the
Gaussian mechanism with noise multiplier ``sigma`` (Dwork and Roth 2014, Thm. A.1;
its Rényi / PLD analysis is that of one DP-SGD step with sampling rate 1, Mironov
2017, arXiv 1702.07476), and charges exactly that step, ``(sigma, q = 1, 1)``, to the
accountant it keeps for DP-SGD (:mod:`securefed.app.private_training`). The loss and
accuracy it sends are post-processing of the noisy sums (ratios, clamped to their
ranges), so they cost nothing more.

Numpy only; the sums come from :func:`securefed.training.bounded_sums`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from securefed.exceptions import ConfigError
from securefed.privacy.base import HistoryEntry
from securefed.privacy.noise import RandomSource

__all__ = ["SENSITIVITY", "NoisedStats", "noise_stats", "stats_step"]

#: L2 sensitivity of the per-example vector ``(clipped loss / B, correct, 1)``.
SENSITIVITY = math.sqrt(3.0)


@dataclass(frozen=True)
class NoisedStats:
    """Loss and accuracy computed from noisy sums (post-processing)."""

    loss: float
    accuracy: float


def stats_step(noise_multiplier: float) -> HistoryEntry:
    """The accountant entry of one release: a Gaussian step with sample rate 1."""
    return (float(noise_multiplier), 1.0, 1)


def noise_stats(sums: npt.ArrayLike, *, noise_multiplier: float, loss_bound: float,
                source: RandomSource) -> NoisedStats:
    """Release ``(loss, accuracy)`` from the sums ``(sum l_i / B, sum c_i, n)``.

    Parameters
    ----------
    sums : array of 3 floats
        From :func:`securefed.training.bounded_sums`; each example's share must be
        in ``[0, 1]`` per coordinate (checked on the totals: ``0 <= S_0, S_1 <= S_2``).
    noise_multiplier : float
        ``sigma``: the noise std divided by the sensitivity ``sqrt(3)``.
    loss_bound : float
        ``B``, to scale the loss back.
    source : RandomSource
        The Gaussian noise (the OS CSPRNG in production).

    Raises
    ------
    ConfigError
        If the sums are not three finite values within their ranges, or sigma <= 0.
    """
    s = np.asarray(sums, dtype=np.float64)
    if s.shape != (3,) or not np.all(np.isfinite(s)) or not (
            0 <= s[0] <= s[2] and 0 <= s[1] <= s[2]):
        raise ConfigError(f"statistics sums must be (loss/B, correct, count) within "
                          f"range, got {s.tolist()}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    noisy = s + source.normal(3) * noise_multiplier * SENSITIVITY
    count = max(float(noisy[2]), 1.0)
    loss = min(max(float(noisy[0]) * loss_bound / count, 0.0), loss_bound)
    accuracy = min(max(float(noisy[1]) / count, 0.0), 1.0)
    return NoisedStats(loss, accuracy)
