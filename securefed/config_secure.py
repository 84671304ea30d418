"""The ``[secure]`` table: how client updates are aggregated so the server sees only sums.

::

    [secure]
    mode = "none"             # "none" | "secagg" (SecAgg+) | "ckks" (TenSEAL CKKS)
    clipping_range = 1.0      # every update coordinate must lie in [-c, c]
    on_overflow = "error"     # or "clip": clip and report the count per round
    allow_inexact = false     # allow LoRA/FeDeRA's factor-wise (inexact) mean
    stage_timeout_s = 120.0   # wait per protocol stage after training
    max_weight = 65536        # largest client weight (training examples)
    # SecAgg+ (Bell et al. 2020, arXiv:2009.05807)
    bits = 32                 # modulus 2**bits
    degree = 0                # neighbours k (0: O(log n))
    threshold = 0             # Shamir t (0: floor(k/2) + 1)
    adversary = "malicious"   # or "semi-honest": signed keys + consistency round, or not
    # CKKS (Cheon et al. 2017)
    key_role = "authority"    # or "shared" (every client holds the secret key; weaker)
    poly_modulus_degree = 8192
    coeff_mod_bit_sizes = "60,40,60"
    global_scale_bits = 84    # aggregates up to |value| < 2**15; flooded error ~1e-10
    ckks_flooding_bits = 40   # statistical security of the decryption noise flooding
    ckks_key_rotation_rounds = 10  # fresh CKKS keys every R rounds

Validation here is structural; the wrappers of ``strategies/`` check the rest
(overflow bound, exactness of the method) before the first round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securefed.config_check import require
from securefed.exceptions import ConfigError, UnknownNameError

__all__ = ["SECURE_MODES", "SecureConfig"]

SECURE_MODES = ("none", "secagg", "ckks")
"""Valid ``[secure] mode`` values."""

_OVERFLOW = ("error", "clip")
ADVERSARIES = ("malicious", "semi-honest")
"""Valid ``[secure] adversary`` values (SecAgg+): the server it holds against."""
_ROLES = ("authority", "shared")


def _need(cond: bool, key: str, value: object, need: str) -> None:
    require(cond, "secure", key, value, need)


@dataclass(frozen=True)
class SecureConfig:
    """``[secure]``: sum-only aggregation by SecAgg+ or CKKS (see the module docstring)."""

    mode: str = "none"
    clipping_range: float = 1.0
    on_overflow: str = "error"
    allow_inexact: bool = False
    stage_timeout_s: float = 120.0
    max_weight: int = 65536
    bits: int = 32
    degree: int = 0
    threshold: int = 0
    adversary: str = "malicious"
    key_role: str = "authority"
    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: str = "60,40,60"
    global_scale_bits: int = 84
    ckks_flooding_bits: int = 40
    ckks_key_rotation_rounds: int = 10

    def __post_init__(self) -> None:
        if self.mode not in SECURE_MODES:
            raise UnknownNameError("[secure] mode", str(self.mode), SECURE_MODES)
        _need(math.isfinite(self.clipping_range) and self.clipping_range > 0,
              "clipping_range", self.clipping_range, "must be a finite number > 0")
        _need(self.on_overflow in _OVERFLOW, "on_overflow", self.on_overflow,
              f"must be one of {', '.join(_OVERFLOW)}")
        _need(self.stage_timeout_s > 0, "stage_timeout_s", self.stage_timeout_s, "must be > 0")
        _need(self.max_weight >= 1, "max_weight", self.max_weight, "must be >= 1")
        _need(1 <= self.bits <= 62, "bits", self.bits, "must be in 1..62")
        _need(self.degree >= 0, "degree", self.degree, ">= 0 (0 = automatic)")
        _need(self.threshold >= 0, "threshold", self.threshold, ">= 0 (0 = automatic)")
        _need(self.adversary in ADVERSARIES, "adversary", self.adversary,
              f"must be one of {', '.join(ADVERSARIES)} (malicious needs every node's "
              "roster; simulation and in-process runs generate one)")
        _need(self.key_role in _ROLES, "key_role", self.key_role,
              f"must be one of {', '.join(_ROLES)}")
        _need(self.ckks_flooding_bits >= 40, "ckks_flooding_bits", self.ckks_flooding_bits,
              "must be >= 40 (statistical security of the flooding)")
        _need(self.ckks_key_rotation_rounds >= 1, "ckks_key_rotation_rounds",
              self.ckks_key_rotation_rounds, "must be >= 1")
        try:
            bits = self.coeff_bits
        except ValueError:
            bits = ()
        if not bits:
            raise ConfigError(f"[secure] coeff_mod_bit_sizes = {self.coeff_mod_bit_sizes!r} "
                              "must be comma-separated integers, e.g. \"60,40\"") from None

    @property
    def enabled(self) -> bool:
        """Whether a sum-only wrapper is used."""
        return self.mode != "none"

    @property
    def coeff_bits(self) -> tuple[int, ...]:
        """``coeff_mod_bit_sizes`` as integers."""
        return tuple(int(p) for p in self.coeff_mod_bit_sizes.split(",") if p.strip())
