"""Conversion between Flower records and the ``dict[str, np.ndarray]`` payload form.

Strategies aggregate *by key*, never by list position (see ``DESIGN.md``); these are
the only places where an :class:`flwr.app.ArrayRecord` becomes a payload dict or back.
Byte counts come from Flower's own object serialisation, so they are the bytes the
Message carries, not an estimate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.supercore.inflatable.inflatable_object import InflatableObject

__all__ = ["payload_to_record", "raw_nbytes", "record_to_payload", "serialized_nbytes"]


def payload_to_record(payload: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Wrap a payload in an :class:`ArrayRecord`, keeping its key order."""
    arrays = OrderedDict(
        (key, Array(np.ascontiguousarray(value))) for key, value in payload.items()
    )
    return ArrayRecord(arrays)


def record_to_payload(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Unwrap an :class:`ArrayRecord` into ``{key: ndarray}``."""
    return {key: array.numpy() for key, array in record.items()}


def raw_nbytes(payload: Mapping[str, np.ndarray]) -> int:
    """Bytes of the raw tensor data alone (no keys, no headers)."""
    return int(sum(np.asarray(v).nbytes for v in payload.values()))


def serialized_nbytes(record: ArrayRecord) -> int:
    """Bytes of Flower's serialised form of ``record``, as carried inside a Message.

    Flower deflates a record into a tree of objects (the record's reference table,
    one header per Array, and the Array data split into chunks); each distinct object
    travels once. This sums the deflated size of every distinct object in the tree.
    """
    seen: set[str] = set()
    total = 0
    stack: list[InflatableObject] = [record]
    while stack:
        obj = stack.pop()
        if obj.object_id in seen:
            continue
        seen.add(obj.object_id)
        total += len(obj.deflate())
        stack.extend(obj.children.values() if obj.children else ())
    return total
