"""Aggregation math for adapter payloads: pure numpy, keyed by tensor name.

FedAvg (McMahan et al., arXiv 1602.05629) weights each client's tensors by its number
of training examples. For LoRA-family methods the tensors are the factors A and B; the
factor-wise mean is *not* the mean of the products B·A (see the tuning methods'
declared aggregation semantics, and FFA-LoRA, arXiv 2403.12313, which freezes A so that
the mean becomes exact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from securefed.exceptions import AggregationError

__all__ = ["weighted_mean_by_key", "weighted_metric_means"]


def weighted_mean_by_key(
    payloads: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Weighted mean of each tensor over clients, accumulated in float64.

    Parameters
    ----------
    payloads : sequence of mapping str -> ndarray
        One payload per client; all must have the same keys and shapes (validate first).
    weights : sequence of float
        Non-negative weight per client (usually its number of examples).

    Returns
    -------
    dict[str, ndarray]
        ``sum_i w_i x_i / sum_i w_i`` per key, cast back to each tensor's dtype.

    Raises
    ------
    AggregationError
        No payloads, a length mismatch, a negative weight, a zero total weight, or a
        mean that is not finite (then nothing may replace the global adapter).
    """
    if not payloads:
        raise AggregationError("nothing to aggregate: no payloads")
    if len(payloads) != len(weights):
        raise AggregationError(f"{len(payloads)} payloads but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(~np.isfinite(w)) or np.any(w < 0):
        raise AggregationError(f"weights must be finite and >= 0, got {w.tolist()}")
    total = float(w.sum())
    if total <= 0:
        raise AggregationError("total weight is zero")
    keys = list(payloads[0])
    out: dict[str, np.ndarray] = {}
    for key in keys:
        acc = np.zeros(np.shape(payloads[0][key]), dtype=np.float64)
        for wi, payload in zip(w, payloads, strict=True):
            acc += wi * np.asarray(payload[key], dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            mean = (acc / total).astype(np.asarray(payloads[0][key]).dtype, copy=False)
        if not np.all(np.isfinite(mean)):
            bad = int(np.count_nonzero(~np.isfinite(mean)))
            raise AggregationError(f"the weighted mean of {key!r} has {bad} non-finite "
                                   "value(s)")
        out[key] = mean
    return out


def weighted_metric_means(metrics: Sequence[Mapping[str, float]], weights: Sequence[float],
                          *, exclude: str) -> dict[str, float]:
    """Weighted mean of each scalar metric over the clients that report it.

    A key some clients omit is averaged over those that send it (weights renormalised);
    ``exclude`` (the weight key itself) is left out, and so is a mean that is not
    finite (metrics are reported, never aggregated into the model).
    """
    sums: dict[str, float] = {}
    totals: dict[str, float] = {}
    for record, w in zip(metrics, weights, strict=True):
        for key, value in record.items():
            if key == exclude:
                continue
            sums[key] = sums.get(key, 0.0) + w * value
            totals[key] = totals.get(key, 0.0) + w
    out = {}
    for key, acc in sums.items():
        mean = acc / totals[key] if totals[key] > 0 else float("nan")
        if np.isfinite(mean):
            out[key] = float(mean)
    return out
