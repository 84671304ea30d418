"""Deployment sizing for SecAgg+: degree, threshold, bits, bytes and failure bound.

:func:`plan` answers "what does one SecAgg+ round cost for ``n`` clients, ``P``
parameters and a per-client dropout rate ``p``?" without running the protocol. It is
what ``securefed secagg plan`` prints (:mod:`securefed.secagg.cli`).

Choices
-------
Degree ``k``
    Given ``degree``: validated and used as is (``degree_rule = "given"``). Otherwise
    start from :func:`~securefed.secagg.graph.default_degree` (``k = O(log n)``, Bell
    et al. 2020, arXiv:2009.05807) and, while the recovery-failure bound
    :func:`~securefed.secagg.graph.recovery_failure_probability` at rate ``p``
    exceeds ``target_failure``, raise ``k`` by 2 (the ring graph needs even ``k``),
    trying at most up to :data:`MAX_AUTO_DEGREE` and finally the complete graph
    ``k = n - 1`` if that is within the cap. The first ``k`` that meets the target is
    taken (``degree_rule = "default"`` if no raise was needed, ``"raised"``
    otherwise). If none does (for ``p >= 1/2`` no ``t > k/2`` can be met on average),
    the candidate with the smallest bound is taken (smallest ``k`` on ties) and
    ``meets_target`` is ``False``; for ``p >= 1/2`` (with the default threshold) no
    search is made and the default is kept.
Threshold ``t``
    Given, or :func:`~securefed.secagg.graph.default_threshold` ``floor(k/2) + 1``
    of the chosen ``k``.
Bits ``b``
    Given: validated by :class:`~securefed.secagg.quantize.QuantizationConfig` (the
    overflow bound ``n * q_max < 2**b``). Otherwise the minimum that lets ``n``
    clients sum on a grid of ``2**grid_bits - 1`` steps without overflow
    (:func:`~securefed.secagg.quantize.min_bits_for`), rounded up to whole bytes (at
    most 62): a masked value travels in ``ceil(b / 8)`` bytes, so the extra bits give
    a finer grid at no cost. The resolved grid ``q_max`` is the finest that fits in
    ``b`` bits (at least the target grid).
Bytes
    Per client per stage, the :attr:`wire_size` of the message classes of
    :mod:`securefed.secagg.messages` (what :func:`~securefed.secagg.run_protocol`
    reports as ``bytes_per_client``) for a round without dropouts: ``advertise_keys``
    (two X25519 keys), ``share_keys`` (``k`` AES-GCM share bundles), ``masked_input``
    (``P * ceil(b / 8)``) and ``unmask`` (one share per neighbour; an upper bound, as
    neighbours that dropped before sharing send none). Uploads only.
Failure probability
    The union bound ``min(1, n * P[Binom(k, 1 - p) < t])``, an **upper** bound on the
    probability that unmasking lacks shares (independent dropouts at rate ``p``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from securefed.exceptions import ConfigError
from securefed.secagg.crypto import PUBLIC_KEY_BYTES
from securefed.secagg.graph import (
    GraphConfig,
    default_degree,
    default_threshold,
    recovery_failure_probability,
)
from securefed.secagg.messages import (
    ADVERTISE_KEYS,
    BUNDLE_BYTES,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    AdvertiseKeys,
    MaskedInput,
    ShareKeys,
    UnmaskResponse,
)
from securefed.secagg.quantize import MAX_BITS, QuantizationConfig, min_bits_for

__all__ = [
    "DEFAULT_CLIPPING_RANGE",
    "DEFAULT_GRID_BITS",
    "DEFAULT_TARGET_FAILURE",
    "MAX_AUTO_DEGREE",
    "PLAN_KEYS",
    "Plan",
    "failure_probability",
    "plan",
]

DEFAULT_CLIPPING_RANGE = 1.0
"""Default ``c`` of the clipping range ``[-c, c]``."""
DEFAULT_GRID_BITS = 16
"""Default target grid: ``2**16 - 1`` quantisation steps per client value."""
DEFAULT_TARGET_FAILURE = 1e-6
"""Default target for the recovery-failure bound when choosing ``k``."""
MAX_AUTO_DEGREE = 1024
"""Largest degree the automatic search tries."""

_STAGES = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASK)


def failure_probability(n: int, k: int, t: int, dropout_rate: float) -> float:
    """:func:`~securefed.secagg.graph.recovery_failure_probability` (an upper bound)."""
    return recovery_failure_probability(n, k, t, dropout_rate)


@dataclass(frozen=True)
class Plan:
    """A sized SecAgg+ round (see the module docstring for every choice).

    Bytes are per client per stage as ``{stage: bytes}``; ``bytes_per_client`` is
    their sum and ``bytes_total`` that times ``num_clients``; ``float32_bytes`` is the
    plain payload ``4 * num_params`` and ``upload_overhead`` is
    ``bytes_per_client / float32_bytes - 1``. ``mean_error_bound`` is the proven
    per-coordinate quantisation error of the mean over all ``n`` clients (one grid
    step, :func:`~securefed.secagg.quantize.sum_error_bound` divided by ``n``).
    """

    num_clients: int
    num_params: int
    dropout_rate: float
    clipping_range: float
    degree: int
    threshold: int
    degree_rule: str
    bits: int
    modulus: int
    q_max: int
    step: float
    mean_error_bound: float
    stage_bytes: dict[str, int] = field(default_factory=dict)
    bytes_per_client: int = 0
    bytes_total: int = 0
    float32_bytes: int = 0
    upload_overhead: float = 0.0
    failure_probability: float = 0.0
    target_failure: float = DEFAULT_TARGET_FAILURE
    meets_target: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready, in :data:`PLAN_KEYS` order."""
        return asdict(self)

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)


PLAN_KEYS = tuple(Plan.__dataclass_fields__)
"""The keys of :meth:`Plan.to_dict`, in order (stable: tests pin them)."""


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_prob(name: str, value: object, *, upper_open: bool) -> float:
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    v = float(value) if ok else math.nan  # type: ignore[arg-type]
    if not ok or not (v >= 0.0 and (v < 1.0 if upper_open else v <= 1.0)):
        bracket = ")" if upper_open else "]"
        raise ConfigError(f"{name} must be a number in [0, 1{bracket}, got {value!r}")
    return v


def _choose_degree(
    n: int, p: float, threshold: int | None, target: float
) -> tuple[int, int, str, float]:
    """``(k, t, rule, bound)`` by the rule of the module docstring."""
    k0 = default_degree(n)
    if p >= 0.5 and threshold is None:  # t > k/2 > k(1 - p): a larger k cannot help
        t0 = default_threshold(k0)
        bound = failure_probability(n, k0, t0, p)
        return k0, t0, "default", bound
    candidates = list(range(k0, min(n - 1, MAX_AUTO_DEGREE) + 1, 2)) if k0 != n - 1 else [k0]
    if n - 1 <= MAX_AUTO_DEGREE and candidates[-1] != n - 1:
        candidates.append(n - 1)
    best: tuple[float, int, int] | None = None
    for k in candidates:
        t = default_threshold(k) if threshold is None else threshold
        if not k / 2 < t <= k:  # a given threshold fits only some degrees
            continue
        bound = failure_probability(n, k, t, p)
        if bound <= target:
            return k, t, "default" if k == k0 else "raised", bound
        if best is None or bound < best[0]:
            best = (bound, k, t)
    if best is None:
        raise ConfigError(
            f"threshold={threshold} fits no degree k in [{k0}, {candidates[-1]}] "
            "(need k/2 < t <= k); give --degree too"
        )
    bound, k, t = best
    return k, t, "default" if k == k0 else "raised", bound


def plan(
    num_clients: int,
    num_params: int,
    dropout_rate: float,
    *,
    clipping_range: float = DEFAULT_CLIPPING_RANGE,
    bits: int | None = None,
    degree: int | None = None,
    threshold: int | None = None,
    target_failure: float = DEFAULT_TARGET_FAILURE,
    grid_bits: int = DEFAULT_GRID_BITS,
) -> Plan:
    """Size one SecAgg+ round without running it.

    Parameters
    ----------
    num_clients : int
        ``n >= 2`` clients in the round.
    num_params : int
        ``P >= 1`` float values per client.
    dropout_rate : float
        Per-client dropout probability ``p`` in ``[0, 1)``.
    clipping_range : float
        ``c`` of ``[-c, c]`` (for the grid step and error bound).
    bits, degree, threshold : int or None
        Fix ``b``, ``k`` or ``t``; ``None`` chooses them (module docstring).
    target_failure : float
        Target for the recovery-failure bound when ``k`` is chosen, in ``[0, 1]``.
    grid_bits : int
        Target grid ``2**grid_bits - 1`` when ``bits`` is chosen, ``1..53``.

    Returns
    -------
    Plan

    Raises
    ------
    ConfigError
        Naming the argument: ``num_clients`` < 2, ``num_params`` < 1,
        ``dropout_rate`` outside ``[0, 1)``, an invalid ``(n, k, t)``, or ``bits``
        that overflow for ``n`` clients.
    """
    n = _check_int("num_clients", num_clients, 2)
    size = _check_int("num_params", num_params, 1)
    p = _check_prob("dropout_rate", dropout_rate, upper_open=True)
    target = _check_prob("target_failure", target_failure, upper_open=False)
    grid = _check_int("grid_bits", grid_bits, 1)
    if grid > 53:
        raise ConfigError(f"grid_bits must be <= 53, got {grid}")
    if degree is None:
        k, t, rule, bound = _choose_degree(n, p, threshold, target)
    else:
        k = _check_int("degree", degree, 1)
        t = default_threshold(k) if threshold is None else threshold
        graph = GraphConfig(num_clients=n, degree=k, threshold=t)
        k, t, rule = graph.degree, graph.threshold, "given"
        bound = failure_probability(n, k, t, p)
    if bits is None:
        b = min_bits_for(n, 2**grid - 1)
        # The wire packs ceil(b / 8) bytes per value: the rest of the last byte buys a
        # finer grid for free.
        b = max(b, min(MAX_BITS, 8 * math.ceil(b / 8)))
        if b > MAX_BITS:
            raise ConfigError(
                f"num_clients={n} at grid_bits={grid} needs {b} bits > {MAX_BITS}; "
                "lower grid_bits"
            )
    else:
        b = _check_int("bits", bits, 1)
    quant = QuantizationConfig(clipping_range=clipping_range, bits=b, num_clients=n)
    stage_bytes = {
        ADVERTISE_KEYS: AdvertiseKeys(
            sender=1, c_public=bytes(PUBLIC_KEY_BYTES), s_public=bytes(PUBLIC_KEY_BYTES)
        ).wire_size,
        SHARE_KEYS: ShareKeys(
            sender=1, ciphertexts={j: bytes(BUNDLE_BYTES) for j in range(2, k + 2)}
        ).wire_size,
        MASKED_INPUT: MaskedInput(
            sender=1, vector=np.broadcast_to(np.uint64(0), (size,)), bits=b
        ).wire_size,
        UNMASK: UnmaskResponse(
            sender=1, b_shares={j: 0 for j in range(2, k + 2)}, s_shares={}
        ).wire_size,
    }
    per_client = sum(stage_bytes.values())
    return Plan(
        num_clients=n,
        num_params=size,
        dropout_rate=p,
        clipping_range=quant.clipping_range,
        degree=k,
        threshold=t,
        degree_rule=rule,
        bits=b,
        modulus=quant.modulus,
        q_max=quant.grid_max,
        step=quant.step,
        mean_error_bound=quant.step,
        stage_bytes={s: int(stage_bytes[s]) for s in _STAGES},
        bytes_per_client=int(per_client),
        bytes_total=int(per_client) * n,
        float32_bytes=4 * size,
        upload_overhead=per_client / (4 * size) - 1.0,
        failure_probability=bound,
        target_failure=target,
        meets_target=bound <= target,
    )
