"""Differential privacy for securefed: accountants and noise calibration.

What is here
------------
- :mod:`~securefed.privacy.accountants` — one small :class:`Accountant` interface
  (``mechanism``, ``step``, ``get_epsilon``, ``state_dict`` / ``load_state_dict``) for the
  Poisson-subsampled Gaussian mechanism of DP-SGD (Abadi et al. 2016, arXiv 1607.00133),
  and the :data:`ACCOUNTANTS` registry: ``rdp`` (Mironov 2017, arXiv 1702.07476), ``prv``
  (Gopi et al. 2021, arXiv 2106.02848), ``gdp`` (Dong et al. 2019, arXiv 1905.02383;
  an approximation, not an upper bound) and ``pld`` (Doroshenko et al. 2022,
  arXiv 2207.04380).
- :mod:`~securefed.privacy.calibration` — :func:`calibrate_noise`, the smallest noise
  multiplier whose epsilon does not exceed a target, with any accountant.
- :mod:`~securefed.privacy.cli` — the ``securefed privacy epsilon|noise`` sub-command
  (imported on demand; not re-exported here).

What comes next
---------------
Sample-level DP-SGD clients (Opacus) with one persistent accountant per client, a
per-round privacy ledger (JSONL in the run directory), and hard (epsilon, delta)
budgets that refuse a round before it would overspend.
"""

from __future__ import annotations

from securefed.privacy.accountants import (
    ACCOUNTANTS,
    STATE_VERSION,
    Accountant,
    GDPAccountant,
    PLDAccountant,
    PRVAccountant,
    RDPAccountant,
    create_accountant,
    register_accountant,
)
from securefed.privacy.calibration import CalibrationResult, calibrate_noise, epsilon_for

__all__ = [
    "ACCOUNTANTS",
    "STATE_VERSION",
    "Accountant",
    "CalibrationResult",
    "GDPAccountant",
    "PLDAccountant",
    "PRVAccountant",
    "RDPAccountant",
    "calibrate_noise",
    "create_accountant",
    "epsilon_for",
    "register_accountant",
]
