"""Noise calibration: the smallest noise multiplier whose epsilon meets a target.

:func:`calibrate_noise` searches the noise multiplier sigma of the Poisson-subsampled
Gaussian mechanism of DP-SGD (Abadi et al. 2016, arXiv 1607.00133) by bisection. It
uses only the :class:`~securefed.privacy.accountants.Accountant` interface, with a
fresh accountant for every probe, so it works with any registered analysis whose
epsilon is a proven upper bound: RDP (Mironov 2017, arXiv 1702.07476), PRV (Gopi et
al. 2021, arXiv 2106.02848) or PLD (Doroshenko et al. 2022, arXiv 2207.04380). GDP
(Dong et al. 2019, arXiv 1905.02383) is a central-limit approximation that can
underestimate epsilon: calibrating with it is a ConfigError
(:func:`~securefed.privacy.accountants.check_budget_accountant`).

``extra`` composes further, fixed mechanisms with the calibrated steps (for example
the Gaussian releases of noised client statistics, :mod:`securefed.privacy.stats`), so
that the calibrated sigma keeps the *whole* run within the target.

The result is always the *upper* end of the final bracket, a sigma whose epsilon was
computed and found ``<= target_epsilon``. The guarantee therefore holds even where a
numerical accountant is not exactly monotone in sigma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from securefed.exceptions import ConfigError
from securefed.privacy.accountants import (
    check_budget_accountant,
    create_accountant,
    validate_delta,
    validate_step,
)
from securefed.privacy.base import HistoryEntry

__all__ = ["SIGMA_MAX", "SIGMA_MIN", "CalibrationResult", "calibrate_noise", "epsilon_for"]

#: Smallest noise multiplier probed. Below it PLD gets very slow (minutes at 0.01) and
#: PRV fails to discretise; a target reachable with less noise gets ``SIGMA_MIN``.
SIGMA_MIN = 0.3
#: Largest noise multiplier probed; a target still missed there is unreachable.
SIGMA_MAX = 1024.0


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of :func:`calibrate_noise`.

    Attributes
    ----------
    noise_multiplier : float
        The calibrated noise multiplier.
    epsilon : float
        The epsilon the accountant reports at that noise multiplier; ``<= target``.
    """

    noise_multiplier: float
    epsilon: float


def _check_steps(steps: object) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")


def epsilon_for(
    accountant_name: str, *, noise_multiplier: float, sample_rate: float, steps: int,
    delta: float, extra: Sequence[HistoryEntry] = (),
) -> float:
    """Epsilon of ``steps`` subsampled Gaussian steps (then ``extra``), from a fresh
    accountant.

    Any registered accountant is accepted here, ``gdp`` included (``securefed privacy
    epsilon`` labels it as an approximation); budgets and calibration refuse it.

    Raises
    ------
    UnknownNameError
        If no accountant has that name.
    ConfigError
        If an argument is out of range.
    """
    acc = create_accountant(accountant_name)
    _check_steps(steps)
    acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, num_steps=steps)
    for sigma, q, n in extra:
        acc.step(noise_multiplier=sigma, sample_rate=q, num_steps=n)
    return acc.get_epsilon(delta)


def calibrate_noise(
    accountant_name: str,
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    tol: float = 1e-3,
    extra: Sequence[HistoryEntry] = (),
) -> CalibrationResult:
    """Smallest noise multiplier (up to ``tol``) with epsilon ``<= target_epsilon``.

    Parameters
    ----------
    accountant_name : str
        A name registered in :data:`~securefed.privacy.accountants.ACCOUNTANTS`.
    target_epsilon : float
        Target epsilon, finite and > 0.
    delta : float
        Target delta, in ``(0, 1)``.
    sample_rate : float
        Poisson sampling rate, in ``(0, 1]``.
    steps : int
        Total number of steps (local steps per round times rounds), >= 1.
    tol : float
        Relative width of the final bracket on sigma, in ``(0, 1)``.
    extra : sequence of (noise_multiplier, sample_rate, num_steps)
        Fixed mechanisms composed after the calibrated steps (their cost counts
        against the target; they are not calibrated).

    Returns
    -------
    CalibrationResult
        ``noise_multiplier`` is the upper end of the final bracket ``[lo, hi]`` with
        ``hi - lo <= tol * hi``; ``epsilon`` is its computed epsilon, ``<= target``.
        If even :data:`SIGMA_MIN` meets the target, ``SIGMA_MIN`` is returned.

    Raises
    ------
    UnknownNameError
        If no accountant has that name.
    ConfigError
        If the accountant is not a proven upper bound (``gdp``), an argument is out of
        range, or the target cannot be met with a noise multiplier up to
        :data:`SIGMA_MAX` (e.g. RDP cannot go much below 0.1 at delta = 1e-5 with its
        default orders).
    """
    check_budget_accountant(accountant_name)  # unknown names and gdp fail before any work
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, int | float) or not (
        math.isfinite(target_epsilon) and target_epsilon > 0
    ):
        raise ConfigError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    validate_delta(delta)
    _check_steps(steps)
    validate_step(1.0, sample_rate, steps)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        raise ConfigError(f"tol must be in (0, 1), got {tol!r}")
    extra = tuple(extra)
    for entry in extra:
        validate_step(*entry)

    def eps(sigma: float) -> float:
        return epsilon_for(accountant_name, noise_multiplier=sigma, sample_rate=sample_rate,
                           steps=steps, delta=delta, extra=extra)

    # Bracket: eps(lo) > target >= eps(hi).
    hi = 1.0
    eps_hi = eps(hi)
    if eps_hi > target_epsilon:
        lo = hi
        while eps_hi > target_epsilon:
            if hi >= SIGMA_MAX:
                raise ConfigError(
                    f"target_epsilon={target_epsilon!r} is unreachable with the "
                    f"{accountant_name} accountant: epsilon is still {eps_hi:.6g} at "
                    f"noise_multiplier={hi:g} (sample_rate={sample_rate!r}, steps={steps!r}, "
                    f"delta={delta!r})"
                )
            lo, hi = hi, hi * 2
            eps_hi = eps(hi)
    else:
        lo = hi / 2
        while (eps_lo := eps(lo)) <= target_epsilon:
            hi, eps_hi = lo, eps_lo
            if hi <= SIGMA_MIN:
                return CalibrationResult(noise_multiplier=hi, epsilon=eps_hi)
            lo = max(hi / 2, SIGMA_MIN)

    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        eps_mid = eps(mid)
        if eps_mid <= target_epsilon:
            hi, eps_hi = mid, eps_mid
        else:
            lo = mid
    return CalibrationResult(noise_multiplier=hi, epsilon=eps_hi)
