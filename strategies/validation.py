"""Validation of a client's reply payload against the global payload's spec.

A reply is accepted only if its keys are exactly the expected keys, every tensor has
the expected shape and dtype, every value is finite and the payload is within the size
limit. Anything else raises :class:`~securefed.exceptions.PayloadError` with a reason
that names the offending key, so that the strategy can drop the reply, log why and
count it, without the global adapter ever seeing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from securefed.exceptions import PayloadError

__all__ = ["PayloadSpec", "validate_payload"]


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


def _preview(keys: set[str], limit: int = 5) -> str:
    items = sorted(keys)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(repr(k) for k in items[:limit]) + more


def validate_payload(payload: Mapping[str, object], spec: PayloadSpec) -> None:
    """Raise :class:`PayloadError` unless ``payload`` matches ``spec`` exactly."""
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be a mapping, got {type(payload).__name__}")
    got, want = set(payload), set(spec.shapes)
    if missing := want - got:
        raise PayloadError(f"missing keys: {_preview(missing)}")
    if extra := got - want:
        raise PayloadError(f"unexpected keys: {_preview(extra)}")
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
