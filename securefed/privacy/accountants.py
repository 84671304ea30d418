"""Privacy accountants for the Poisson-subsampled Gaussian mechanism (DP-SGD).

Every accountant sits behind one small interface, :class:`Accountant`:

- ``mechanism`` — the registry name of the analysis (``"rdp"``, ``"prv"``, ...);
- ``step(*, noise_multiplier, sample_rate, num_steps=1)`` — compose ``num_steps``
  Poisson-subsampled Gaussian steps (Abadi et al. 2016, arXiv 1607.00133);
- ``get_epsilon(delta)`` — the epsilon spent so far at that delta;
- ``state_dict()`` / ``load_state_dict(state)`` — a JSON-serialisable state that
  survives a process restart; a state of another mechanism is refused.

The state of every accountant is its *history*: a list of
``(noise_multiplier, sample_rate, num_steps)`` entries, consecutive equal
``(noise_multiplier, sample_rate)`` pairs merged (as Opacus does). Epsilon is always
recomputed from the whole history, so an accountant rebuilt from a saved state gives
bit-for-bit the same epsilon as the one that wrote it, and ``step(num_steps=n)`` is the
same as ``n`` calls of ``step(num_steps=1)``.

Implementations, registered by name in :data:`ACCOUNTANTS`:

========  ===========================================================  ============
name      analysis                                                     upper bound?
========  ===========================================================  ============
``rdp``   Rényi DP (Mironov 2017, arXiv 1702.07476), Opacus             yes
``prv``   PRV / FFT composition (Gopi et al. 2021, arXiv 2106.02848),   yes
          Opacus
``gdp``   Gaussian DP + CLT (Dong et al. 2019, arXiv 1905.02383),       **no**
          Opacus
``pld``   PLD, connect-the-dots (Doroshenko et al. 2022,                yes
          arXiv 2207.04380), Google ``dp_accounting``
========  ===========================================================  ============

``gdp`` relies on a central-limit approximation that can *underestimate* epsilon
(Gopi et al. 2021); its :attr:`Accountant.is_upper_bound` is ``False``.
:func:`create_budget_accountant` and :func:`check_budget_accountant` refuse it (a
:class:`~securefed.exceptions.ConfigError` naming :data:`BUDGET_ACCOUNTANTS`): every
budget, ledger and noise calibration uses them, so an approximation never decides how
much noise protects a client. ``securefed privacy epsilon`` may still print a ``gdp``
epsilon, labelled as an approximation.

Opacus and ``dp_accounting`` are imported lazily: importing Opacus pulls in torch
(seconds), and nothing here needs it until an epsilon is computed.
"""

from __future__ import annotations

import math
from typing import Any

from securefed.exceptions import ConfigError, RegistryError
from securefed.privacy.base import (
    STATE_VERSION,
    Accountant,
    HistoryEntry,
    is_real,
    validate_delta,
    validate_step,
)
from securefed.registry import Registry

__all__ = [
    "ACCOUNTANTS",
    "BUDGET_ACCOUNTANTS",
    "STATE_VERSION",
    "Accountant",
    "GDPAccountant",
    "PLDAccountant",
    "PRVAccountant",
    "RDPAccountant",
    "check_budget_accountant",
    "create_accountant",
    "create_budget_accountant",
    "register_accountant",
    "validate_delta",
    "validate_step",
]


class RDPAccountant(Accountant):
    """Rényi-DP accountant (Mironov 2017, arXiv 1702.07476), via Opacus.

    The RDP of the sampled Gaussian mechanism (Mironov, Talwar and Zhang 2019,
    arXiv 1908.10530) is summed over the history at Opacus's default orders and
    converted to (epsilon, delta)-DP. A valid but loose upper bound.
    """

    mechanism = "rdp"

    def _epsilon(self, history: tuple[HistoryEntry, ...], delta: float) -> float:
        from opacus.accountants import RDPAccountant as _OpacusRDP

        acc = _OpacusRDP()
        acc.history = list(history)
        return float(acc.get_epsilon(delta))


class PRVAccountant(Accountant):
    """Privacy-random-variable accountant (Gopi et al. 2021, arXiv 2106.02848), via Opacus.

    The privacy loss random variables of the steps are discretised and convolved with
    the FFT. The returned value is the *upper* end of Opacus's error interval
    (``eps_error=0.01``, ``delta_error=delta/1000``).
    """

    mechanism = "prv"

    def _epsilon(self, history: tuple[HistoryEntry, ...], delta: float) -> float:
        from opacus.accountants import PRVAccountant as _OpacusPRV

        acc = _OpacusPRV()
        acc.history = list(history)
        return float(acc.get_epsilon(delta))


class GDPAccountant(Accountant):
    """Gaussian-DP accountant (Dong, Roth and Su 2019, arXiv 1905.02383), via Opacus.

    Each entry is approximated by the central limit theorem as
    ``mu_i = q * sqrt(T_i * (exp(sigma**-2) - 1))``-GDP; mu-GDP composes as
    ``mu = sqrt(sum mu_i**2)``, which for one entry is exactly Opacus's
    ``compute_mu_poisson``. Epsilon is the inverse of the GDP-to-DP dual.

    Warnings
    --------
    The CLT approximation can *underestimate* epsilon (Gopi et al. 2021), so
    :attr:`is_upper_bound` is ``False``. Use it for comparison, not for guarantees.
    """

    mechanism = "gdp"
    is_upper_bound = False

    def _epsilon(self, history: tuple[HistoryEntry, ...], delta: float) -> float:
        from opacus.accountants.analysis import gdp

        mu_sq = sum(
            float(gdp.compute_mu_poisson(steps=n, noise_multiplier=s, sample_rate=q)) ** 2
            for s, q, n in history
        )
        mu = math.sqrt(mu_sq)
        if not math.isfinite(mu):
            return math.inf
        if mu == 0 or float(gdp.delta_eps_mu(eps=0.0, mu=mu)) <= delta:
            return 0.0
        if float(gdp.delta_eps_mu(eps=500.0, mu=mu)) > delta:
            return math.inf  # beyond Opacus's root bracket [0, 500]
        return float(gdp.eps_from_mu(mu=mu, delta=delta))


class PLDAccountant(Accountant):
    """Privacy-loss-distribution accountant, via Google's ``dp_accounting``.

    Composes ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)``
    for every history entry in a ``dp_accounting.pld.PLDAccountant`` (add-or-remove
    neighbours, pessimistic connect-the-dots discretisation of Doroshenko et al. 2022,
    arXiv 2207.04380). A tight numerical upper bound.

    Parameters
    ----------
    value_discretization_interval : float
        Grid step of the privacy loss; smaller is tighter and slower.

    Notes
    -----
    Slow for very small noise multipliers (sigma = 0.3, q = 1: about 1 s; sigma = 0.01:
    minutes), since the loss grid grows as the losses do. The composed distribution
    is cached until the next :meth:`step`.
    """

    mechanism = "pld"

    def __init__(self, value_discretization_interval: float = 1e-4) -> None:
        super().__init__()
        if not is_real(value_discretization_interval) or not (
            0 < value_discretization_interval < 1
        ):
            raise ConfigError(
                "value_discretization_interval must be in (0, 1), got "
                f"{value_discretization_interval!r}"
            )
        self.value_discretization_interval = float(value_discretization_interval)
        self._cached: Any = None

    def _on_change(self) -> None:
        self._cached = None

    def _epsilon(self, history: tuple[HistoryEntry, ...], delta: float) -> float:
        if self._cached is None:
            import dp_accounting
            from dp_accounting.pld import PLDAccountant as _GooglePLD

            acc = _GooglePLD(value_discretization_interval=self.value_discretization_interval)
            acc.compose(dp_accounting.ComposedDpEvent([
                dp_accounting.SelfComposedDpEvent(
                    dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n
                )
                for s, q, n in history
            ]))
            self._cached = acc
        return float(self._cached.get_epsilon(delta))

    def copy(self) -> PLDAccountant:
        """An independent copy with the same history and discretisation interval."""
        clone = PLDAccountant(self.value_discretization_interval)
        clone.load_state_dict(self.state_dict())
        return clone


#: Accountant classes by mechanism name.
ACCOUNTANTS: Registry[type[Accountant]] = Registry("accountant")


def register_accountant(name: str, cls: type[Accountant]) -> None:
    """Register an accountant class; its ``mechanism`` must equal ``name``.

    Raises
    ------
    RegistryError
        On a duplicate name, a non-:class:`Accountant` class or a mismatched mechanism.
    """
    if not (isinstance(cls, type) and issubclass(cls, Accountant)):
        raise RegistryError(f"accountant {name!r} must be an Accountant subclass, got {cls!r}")
    if getattr(cls, "mechanism", None) != name:
        raise RegistryError(
            f"accountant {name!r} has mechanism {getattr(cls, 'mechanism', None)!r}; "
            "they must match so that saved states name their analysis"
        )
    ACCOUNTANTS.register(name, cls)


def create_accountant(name: str) -> Accountant:
    """A fresh accountant of the registered mechanism ``name``.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered; the message lists the valid names.
    """
    return ACCOUNTANTS.get(name)()


for _cls in (RDPAccountant, PRVAccountant, GDPAccountant, PLDAccountant):
    register_accountant(_cls.mechanism, _cls)
del _cls


def budget_accountants() -> tuple[str, ...]:
    """Names of the registered accountants whose epsilon is a proven upper bound."""
    return tuple(sorted(n for n in ACCOUNTANTS.names() if ACCOUNTANTS.get(n).is_upper_bound))


#: Accountants valid for budgets, ledgers and noise calibration (upper bounds only).
BUDGET_ACCOUNTANTS: tuple[str, ...] = budget_accountants()


def check_budget_accountant(name: str, where: str = "accountant") -> None:
    """Refuse an accountant that is unknown or not a proven upper bound.

    Parameters
    ----------
    name : str
        The accountant's registry name.
    where : str
        What is being set, for the message (e.g. ``"[dp] accountant"``).

    Raises
    ------
    UnknownNameError
        If no accountant has that name.
    ConfigError
        If its epsilon is an approximation (``gdp``): a budget or a calibrated noise
        multiplier needs an upper bound. The message names the valid accountants.
    """
    cls = ACCOUNTANTS.get(name)
    if not cls.is_upper_bound:
        valid = ", ".join(budget_accountants())
        raise ConfigError(
            f"{where} = {name!r} is an approximation that can underestimate epsilon "
            f"(central-limit theorem; Gopi et al. 2021, arXiv 2106.02848) and cannot "
            f"enforce a budget or calibrate noise; valid accountants: {valid}. "
            f"'securefed privacy epsilon --accountant {name}' still prints it, labelled "
            "as an approximation")


def create_budget_accountant(name: str, where: str = "accountant") -> Accountant:
    """A fresh accountant for budgets and ledgers: a proven upper bound only.

    Raises
    ------
    UnknownNameError, ConfigError
        As :func:`check_budget_accountant`.
    """
    check_budget_accountant(name, where)
    return create_accountant(name)
