"""Validation of a client's reply payload against the global payload's spec.

A reply is accepted only if its keys are exactly the expected keys, every tensor has
the expected shape and dtype, every value is finite and the payload is within the size
limit. Anything else raises :class:`~securefed.exceptions.PayloadError` with a reason
that names the offending key, so that the strategy can drop the reply, log why and
count it, without the global adapter ever seeing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import MetricRecord

from securefed.exceptions import PayloadError

__all__ = ["PayloadSpec", "check_metrics", "check_weight", "preview_keys", "validate_payload"]


@dataclass(frozen=True)
class PayloadSpec:
    """Expected layout of a payload: key -> (shape, dtype), plus a byte limit."""

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    max_bytes: int

    def __post_init__(self) -> None:
        if set(self.shapes) != set(self.dtypes):
            raise ValueError("shapes and dtypes must have the same keys")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {self.max_bytes}")

    @classmethod
    def of(cls, payload: Mapping[str, np.ndarray], *, max_bytes: int) -> PayloadSpec:
        """The spec that ``payload`` itself satisfies."""
        return cls(
            shapes={k: tuple(np.shape(v)) for k, v in payload.items()},
            dtypes={k: str(np.asarray(v).dtype) for k, v in payload.items()},
            max_bytes=max_bytes,
        )

    @property
    def nbytes(self) -> int:
        """Raw bytes of a payload of this spec."""
        return int(
            sum(
                int(np.prod(s, dtype=np.int64)) * np.dtype(self.dtypes[k]).itemsize
                for k, s in self.shapes.items()
            )
        )


def preview_keys(keys: set[str], limit: int = 5) -> str:
    """Up to ``limit`` of ``keys``, sorted and cut to 80 characters each, for messages."""
    items = sorted(keys)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(repr(k[:80]) for k in items[:limit]) + more


def validate_payload(payload: Mapping[str, object], spec: PayloadSpec) -> None:
    """Raise :class:`PayloadError` unless ``payload`` matches ``spec`` exactly."""
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be a mapping, got {type(payload).__name__}")
    got, want = set(payload), set(spec.shapes)
    if missing := want - got:
        raise PayloadError(f"missing keys: {preview_keys(missing)}")
    if extra := got - want:
        raise PayloadError(f"unexpected keys: {preview_keys(extra)}")
    total = 0
    for key in spec.shapes:
        value = payload[key]
        if not isinstance(value, np.ndarray):
            raise PayloadError(f"{key!r}: expected ndarray, got {type(value).__name__}")
        if tuple(value.shape) != tuple(spec.shapes[key]):
            raise PayloadError(
                f"{key!r}: shape {tuple(value.shape)} != expected {tuple(spec.shapes[key])}"
            )
        if str(value.dtype) != spec.dtypes[key]:
            raise PayloadError(f"{key!r}: dtype {value.dtype} != expected {spec.dtypes[key]}")
        if not np.all(np.isfinite(value)):
            bad = int(np.count_nonzero(~np.isfinite(value)))
            raise PayloadError(f"{key!r}: {bad} non-finite value(s) (NaN or Inf)")
        total += value.nbytes
        if total > spec.max_bytes:
            raise PayloadError(f"payload exceeds the size limit of {spec.max_bytes} bytes")


def check_weight(value: object, *, key: str, max_weight: int) -> int:
    """A client's aggregation weight: an int in ``[1, max_weight]``, else PayloadError.

    FedAvg (McMahan et al., arXiv 1602.05629) weighs a client by its example count; an
    unbounded weight lets one client own the mean (or make it ``inf``: ``1e308``), so
    plaintext aggregation bounds it as the secure modes do (``[secure] max_weight``).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{key!r} must be an int in [1, max_weight={max_weight}], got "
                           f"{type(value).__name__} {str(value)[:40]}")
    if not 1 <= value <= max_weight:
        raise PayloadError(f"{key!r} must be an int in [1, max_weight={max_weight}], got "
                           f"{str(value)[:40]}; raise [secure] max_weight for larger clients")
    return value


def check_metrics(record: object, *, name: str) -> dict[str, float]:
    """A reply's metrics: a MetricRecord of finite scalars (keys up to 128 characters).

    Raises
    ------
    PayloadError
        Not a MetricRecord, a key that is not a short string, or a value that is a
        list, a bool or not finite.
    """
    if not isinstance(record, MetricRecord):
        raise PayloadError(f"{name!r} must be a MetricRecord, got {type(record).__name__}")
    out: dict[str, float] = {}
    for key, value in record.items():
        if not isinstance(key, str) or len(key) > 128:
            raise PayloadError(f"{name!r}: metric keys must be strings of at most 128 "
                               f"characters, got {str(key)[:40]!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"{name!r}: metric {key!r} must be a number, got "
                               f"{type(value).__name__}")
        try:
            as_float = float(value)
        except OverflowError:
            as_float = math.inf
        if not math.isfinite(as_float):
            raise PayloadError(f"{name!r}: metric {key!r} is not finite ({str(value)[:40]})")
        out[key] = as_float
    return out
