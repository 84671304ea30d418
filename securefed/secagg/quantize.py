"""Stochastic quantisation of float vectors into the ring Z_{2^b} for secure aggregation.

Secure aggregation adds masked integer vectors modulo ``2**bits`` (Bonawitz et al. 2017,
CCS, "Practical Secure Aggregation for Privacy-Preserving Machine Learning"; Bell et al.
2020, arXiv:2009.05807). Float updates must therefore be mapped to integers first:

* the declared clipping range ``[-c, c]`` is mapped affinely onto the grid
  ``{0, 1, ..., q_max}``, with grid step ``step = 2c / q_max``;
* each value is rounded to one of its two neighbouring grid points at random, with
  probabilities chosen so that the rounding is **unbiased** (stochastic rounding):
  ``E[q] = (x + c) / step``;
* the server sums ``n`` quantised vectors modulo ``2**bits``. Because every quantised
  value lies in ``[0, q_max]``, the integer sum lies in ``[0, n * q_max]``; the config
  refuses, when it is built, any ``(bits, num_clients, q_max)`` with
  ``num_clients * q_max >= 2**bits``, so the modular sum never wraps and equals the
  integer sum exactly.

Unlike Flower's SecAgg+ (which saturates silently at ``±clipping_range``), a value
outside ``[-c, c]`` is a :class:`~securefed.exceptions.PrivacyError` by default. With
``on_overflow="clip"`` it is clipped, and the number clipped is returned in a
:class:`ClipReport`; it is never silent.

Error bound
-----------
Write ``y = (x + c) / step`` for the exact grid coordinate of a value ``x`` in
``[-c, c]``. Stochastic rounding returns ``floor(y)`` or ``floor(y) + 1``, so the
rounding error of one value is ``|q - y| < 1`` grid unit, i.e. less than ``step`` in
value units. The dequantised sum of ``n`` clients, ``S * step - n * c`` for the integer
sum ``S``, therefore differs from the float sum by less than ``n * step`` per
coordinate (the errors of different clients add at worst). This is the proven bound;
:func:`sum_error_bound` adds a float64 rounding term ``16 * eps * n * c``
(``eps = 2**-52``), which is negligible at the default grid sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from securefed.exceptions import ConfigError, PayloadError, PrivacyError

__all__ = [
    "MAX_BITS",
    "MAX_Q_MAX",
    "ClipReport",
    "QuantizationConfig",
    "dequantize_sum",
    "min_bits_for",
    "quantize",
    "sum_error_bound",
]

MAX_BITS = 62
"""Largest supported modulus exponent: uint64 arithmetic wraps modulo 2**64, and
``2**bits`` divides ``2**64``, so sums reduced with a bit mask are exact."""

MAX_Q_MAX = 2**53
"""Largest grid size: every grid point is then exactly representable in float64."""

_OVERFLOW_MODES = ("error", "clip")
_EPS = float(np.finfo(np.float64).eps)


def min_bits_for(num_clients: int, q_max: int, max_weight: int = 0) -> int:
    """Smallest ``bits`` with ``num_clients * max(q_max, max_weight) < 2**bits``.

    Parameters
    ----------
    num_clients : int
        Number of clients whose vectors are summed.
    q_max : int
        Largest quantised value of one client.
    max_weight : int, optional
        Largest integer weight sent in the weight field (0 if none).

    Returns
    -------
    int
        The minimum modulus exponent that cannot overflow.
    """
    largest_sum = num_clients * max(q_max, max_weight)
    return max(1, largest_sum.bit_length())


@dataclass(frozen=True)
class QuantizationConfig:
    """Quantisation parameters shared by every client and the server.

    Parameters
    ----------
    clipping_range : float
        ``c`` in the declared input range ``[-c, c]``; finite and positive.
    bits : int
        Modulus exponent; arithmetic is in ``Z_{2^bits}``, ``1 <= bits <= 62``.
    num_clients : int
        Largest number of clients whose vectors are summed in one round (>= 1).
    on_overflow : {"error", "clip"}
        What to do with a value outside ``[-c, c]``: raise a
        :class:`~securefed.exceptions.PrivacyError` (default), or clip it and count it
        in the :class:`ClipReport`.
    q_max : int or None
        Largest grid value. ``None`` (default) chooses the finest grid that cannot
        overflow: ``min((2**bits - 1) // num_clients, 2**53)``.
    max_weight : int
        Largest integer weight a client may send in the weight field (for weighted
        means, clients pre-scale their update and send their weight inside the masked
        vector, see issue 3). ``0`` (default) means no weight field. The weight sum
        must not overflow either: ``num_clients * max_weight < 2**bits``.

    Raises
    ------
    ConfigError
        If a value is out of range, or ``num_clients * q_max`` (or
        ``num_clients * max_weight``) reaches the modulus; the message names the numbers
        and the minimum ``bits`` that would work.
    """

    clipping_range: float
    bits: int
    num_clients: int
    on_overflow: Literal["error", "clip"] = "error"
    q_max: int | None = None
    max_weight: int = 0

    def __post_init__(self) -> None:
        c = self.clipping_range
        if (
            isinstance(c, bool)
            or not isinstance(c, int | float | np.integer | np.floating)
            or not np.isfinite(c)
            or c <= 0
        ):
            raise ConfigError(f"clipping_range must be a finite number > 0, got {c!r}")
        object.__setattr__(self, "clipping_range", float(c))
        for name in ("bits", "num_clients", "max_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(f"{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not 1 <= self.bits <= MAX_BITS:
            raise ConfigError(f"bits must be in [1, {MAX_BITS}], got {self.bits}")
        if self.num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1, got {self.num_clients}")
        if self.max_weight < 0:
            raise ConfigError(f"max_weight must be >= 0, got {self.max_weight}")
        if self.on_overflow not in _OVERFLOW_MODES:
            raise ConfigError(
                f"on_overflow must be one of {_OVERFLOW_MODES}, got {self.on_overflow!r}"
            )
        modulus = 2**self.bits
        if self.q_max is None:
            q_max = min((modulus - 1) // self.num_clients, MAX_Q_MAX)
            if q_max < 1:
                raise ConfigError(
                    f"bits={self.bits} (modulus {modulus}) leaves no quantisation grid "
                    f"for num_clients={self.num_clients}; need bits >= "
                    f"{min_bits_for(self.num_clients, 1, self.max_weight)}"
                )
        else:
            q_max = self.q_max
            if isinstance(q_max, bool) or not isinstance(q_max, int | np.integer):
                raise ConfigError(f"q_max must be an int or None, got {q_max!r}")
            q_max = int(q_max)
            if not 1 <= q_max <= MAX_Q_MAX:
                raise ConfigError(f"q_max must be in [1, 2**53], got {q_max}")
        object.__setattr__(self, "q_max", q_max)
        for what, largest in (("q_max", q_max), ("max_weight", self.max_weight)):
            if self.num_clients * largest >= modulus:
                raise ConfigError(
                    f"overflow: num_clients * {what} = {self.num_clients} * {largest} = "
                    f"{self.num_clients * largest} >= modulus 2**{self.bits} = {modulus}; "
                    f"need bits >= {min_bits_for(self.num_clients, q_max, self.max_weight)}"
                )

    @property
    def modulus(self) -> int:
        """The modulus ``2**bits``."""
        return 2**self.bits

    @property
    def grid_max(self) -> int:
        """The resolved largest grid value ``q_max`` (never ``None``)."""
        assert self.q_max is not None  # resolved in __post_init__
        return self.q_max

    @property
    def step(self) -> float:
        """Grid step in value units, ``2c / q_max``."""
        return 2.0 * self.clipping_range / self.grid_max


@dataclass(frozen=True)
class ClipReport:
    """What :func:`quantize` did to values outside the clipping range.

    Parameters
    ----------
    num_values : int
        Number of values quantised.
    num_clipped : int
        How many of them lay outside ``[-c, c]`` and were clipped (0 unless
        ``on_overflow="clip"``).
    max_abs : float
        Largest ``|x|`` seen before clipping (0.0 for an empty input).
    """

    num_values: int
    num_clipped: int
    max_abs: float

    @property
    def clipped(self) -> bool:
        """Whether any value was clipped."""
        return self.num_clipped > 0


def quantize(
    x: npt.ArrayLike, config: QuantizationConfig, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint64], ClipReport]:
    """Quantise ``x`` onto the grid ``{0, ..., q_max}`` with unbiased stochastic rounding.

    Parameters
    ----------
    x : array_like of float
        Values, expected in ``[-c, c]``; any shape.
    config : QuantizationConfig
        The shared quantisation parameters.
    rng : numpy.random.Generator
        Source of the rounding randomness (passed in, see ``docs/architecture.md``).

    Returns
    -------
    q : numpy.ndarray of uint64
        Same shape as ``x``; every entry in ``[0, q_max]`` and
        ``E[q] = (x + c) / step`` for ``x`` in range (Bonawitz et al. 2017;
        Bell et al. 2020, arXiv:2009.05807).
    report : ClipReport
        How many values were clipped (only with ``on_overflow="clip"``).

    Raises
    ------
    PayloadError
        If ``x`` holds NaN or infinite values.
    PrivacyError
        If a value lies outside ``[-c, c]`` and ``on_overflow="error"``; the message
        names how many values and the largest ``|x|``.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise PayloadError(f"cannot quantise non-finite values: {bad} of {arr.size} are NaN/inf")
    c = config.clipping_range
    max_abs = float(np.max(np.abs(arr))) if arr.size else 0.0
    outside = int(np.count_nonzero(np.abs(arr) > c)) if max_abs > c else 0
    if outside and config.on_overflow == "error":
        raise PrivacyError(
            f"{outside} of {arr.size} values lie outside the clipping range [-{c}, {c}] "
            f"(max |x| = {max_abs}); clip them before secure aggregation or set "
            "on_overflow='clip' to clip and count them"
        )
    if outside:
        arr = np.clip(arr, -c, c)
    q_max = config.grid_max
    y = (arr + c) * (q_max / (2.0 * c))
    np.clip(y, 0.0, float(q_max), out=y)  # guard float rounding at the ends
    low = np.floor(y)
    up = rng.random(size=y.shape) < (y - low)
    q = low.astype(np.uint64) + up.astype(np.uint64)
    np.minimum(q, np.uint64(q_max), out=q)
    return q, ClipReport(num_values=int(arr.size), num_clipped=outside, max_abs=max_abs)


def dequantize_sum(
    total: npt.ArrayLike, n: int, config: QuantizationConfig
) -> npt.NDArray[np.float64]:
    """Map the modular sum of ``n`` clients' quantised vectors back to a float sum.

    Parameters
    ----------
    total : array_like of uint64
        ``sum_i q_i mod 2**bits`` over ``n`` clients.
    n : int
        Number of clients in the sum, ``1 <= n <= config.num_clients``.
    config : QuantizationConfig
        The config the vectors were quantised with.

    Returns
    -------
    numpy.ndarray of float64
        ``total * step - n * c``; within :func:`sum_error_bound` of the float sum.

    Raises
    ------
    ConfigError
        If ``n`` is out of range.
    PayloadError
        If an entry of ``total`` exceeds ``n * q_max``, which no honest sum can reach.
    """
    n_ok = isinstance(n, int | np.integer) and not isinstance(n, bool)
    if not n_ok or not 1 <= n <= config.num_clients:
        raise ConfigError(f"n must be an int in [1, num_clients={config.num_clients}], got {n!r}")
    arr = np.asarray(total)
    if arr.dtype.kind not in "ui":
        raise PayloadError(f"total must be an integer array, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > int(n) * config.grid_max):
        raise PayloadError(
            f"sum entry outside [0, n * q_max = {int(n) * config.grid_max}]: it cannot come "
            f"from {n} honest quantised vectors"
        )
    return arr.astype(np.float64) * config.step - float(n) * config.clipping_range


def sum_error_bound(n: int, config: QuantizationConfig) -> float:
    """Worst-case per-coordinate error of :func:`dequantize_sum` against the float sum.

    In exact arithmetic each client's stochastic rounding moves a value by less than
    one grid step, so for ``n`` clients with inputs in ``[-c, c]``::

        |dequantize_sum(sum_i q_i, n) - sum_i x_i| < n * step,   step = 2c / q_max

    (Bonawitz et al. 2017; Bell et al. 2020, arXiv:2009.05807). The returned value adds
    ``16 * eps * n * c`` for float64 rounding (``eps = 2**-52``). Clipped values are
    measured against their clipped value, not the original.

    Parameters
    ----------
    n : int
        Number of clients in the sum.
    config : QuantizationConfig
        The quantisation config.

    Returns
    -------
    float
        ``n * step + 16 * eps * n * c``.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"n must be an int >= 1, got {n!r}")
    return float(n) * config.step + 16.0 * _EPS * float(n) * config.clipping_range
