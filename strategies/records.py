"""The payload wire format: ``dict[str, np.ndarray]`` <-> Flower records.

A payload travels as two records inside a Message's ``RecordDict``:

``"arrays"`` (:class:`flwr.app.ArrayRecord`)
    one flat, contiguous array per dtype (``"float32"``, ...) holding every tensor of
    that dtype concatenated in layout order;
``"layout"`` (:class:`flwr.app.ConfigRecord`)
    ``{"layout": json}`` where ``json`` lists ``[key, dtype, shape]`` in order.

Why packed: Flower serialises each Array as an object with its own ``.npy`` header,
metadata and content hashes (about 520 bytes per tensor). LoRA's tensors are small
(``8 x 384`` floats), so one Array per tensor costs 4.5 % on top of the raw bytes; one
Array per dtype costs about 1 % (``bench/comm.py``). It is also the flat vector that
secure aggregation masks.

Packing changes nothing about the semantics: :func:`read_payload` rebuilds the payload
*by key* and rejects a layout that does not describe the arrays exactly, and
strategies aggregate by key, never by position. Byte counts come from Flower's own
object serialisation (:func:`wire_nbytes`), so they are the bytes the Message carries.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import InflatableObject

from securefed.exceptions import PayloadError

__all__ = [
    "ARRAYS_KEY",
    "LAYOUT_KEY",
    "content_payload_nbytes",
    "pack_payload",
    "payload_to_record",
    "raw_nbytes",
    "read_payload",
    "record_to_payload",
    "serialized_nbytes",
    "unpack_payload",
    "wire_nbytes",
    "write_payload",
]

ARRAYS_KEY = "arrays"
LAYOUT_KEY = "layout"
_MAX_LAYOUT_ENTRIES = 100_000


def pack_payload(payload: Mapping[str, np.ndarray]) -> tuple[ArrayRecord, ConfigRecord]:
    """Pack a payload into one flat Array per dtype plus a JSON layout."""
    layout = []
    groups: dict[str, list[np.ndarray]] = {}
    for key, value in payload.items():
        arr = np.asarray(value)
        layout.append([key, str(arr.dtype), list(arr.shape)])
        groups.setdefault(str(arr.dtype), []).append(arr.reshape(-1))
    arrays = OrderedDict(
        (dtype, Array(np.ascontiguousarray(np.concatenate(parts) if parts else
                                           np.zeros(0, dtype=dtype))))
        for dtype, parts in groups.items()
    )
    return ArrayRecord(arrays), ConfigRecord({"layout": json.dumps(layout)})


def _parse_layout(layout: ConfigRecord) -> list[tuple[str, str, tuple[int, ...]]]:
    raw = layout.get("layout")
    if not isinstance(raw, str):
        raise PayloadError("layout record lacks a 'layout' JSON string")
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"layout is not valid JSON: {exc}") from None
    if not isinstance(entries, list) or len(entries) > _MAX_LAYOUT_ENTRIES:
        raise PayloadError("layout must be a list of [key, dtype, shape] entries")
    out, seen = [], set()
    for entry in entries:
        ok = (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
              and isinstance(entry[1], str) and isinstance(entry[2], list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                      for d in entry[2]))
        if not ok:
            raise PayloadError(f"malformed layout entry {str(entry)[:80]!r}")
        if entry[0] in seen:
            raise PayloadError(f"duplicate key {entry[0]!r} in layout")
        seen.add(entry[0])
        out.append((entry[0], entry[1], tuple(entry[2])))
    return out


def unpack_payload(arrays: ArrayRecord, layout: ConfigRecord) -> dict[str, np.ndarray]:
    """Rebuild ``{key: ndarray}``; the layout must describe the arrays exactly.

    Raises
    ------
    PayloadError
        Malformed layout, unknown dtype group, or lengths that do not add up.
    """
    entries = _parse_layout(layout)
    flats: dict[str, np.ndarray] = {}
    for dtype, array in arrays.items():
        flat = array.numpy()
        if flat.ndim != 1 or str(flat.dtype) != dtype:
            raise PayloadError(f"array {dtype!r} must be flat of dtype {dtype}, got "
                               f"{flat.dtype} {flat.shape}")
        flats[dtype] = flat
    offsets = dict.fromkeys(flats, 0)
    out: dict[str, np.ndarray] = {}
    for key, dtype, shape in entries:
        if dtype not in flats:
            raise PayloadError(f"{key!r}: no {dtype} array in the record")
        size = int(np.prod(shape, dtype=np.int64))
        start = offsets[dtype]
        if start + size > flats[dtype].size:
            raise PayloadError(f"{key!r}: layout runs past the end of the {dtype} array")
        out[key] = flats[dtype][start:start + size].reshape(shape)
        offsets[dtype] = start + size
    for dtype, used in offsets.items():
        if used != flats[dtype].size:
            raise PayloadError(f"{flats[dtype].size - used} {dtype} values not described "
                               "by the layout")
    return out


def payload_to_record(payload: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Keyed ArrayRecord (one Array per tensor): the strategy's in-memory form of the
    global adapter, as Flower's ``Strategy.start`` passes it around. Not a wire format."""
    return ArrayRecord(OrderedDict(
        (key, Array(np.ascontiguousarray(value))) for key, value in payload.items()))


def record_to_payload(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`payload_to_record`."""
    return {key: array.numpy() for key, array in record.items()}


def write_payload(payload: Mapping[str, np.ndarray]) -> dict[str, ArrayRecord | ConfigRecord]:
    """The records that carry ``payload`` in a Message (add them to its RecordDict)."""
    arrays, layout = pack_payload(payload)
    return {ARRAYS_KEY: arrays, LAYOUT_KEY: layout}


def read_payload(content: RecordDict) -> dict[str, np.ndarray]:
    """The payload a Message's content carries (see :func:`write_payload`)."""
    if ARRAYS_KEY not in content.array_records or LAYOUT_KEY not in content.config_records:
        raise PayloadError(
            f"expected ArrayRecord {ARRAYS_KEY!r} and ConfigRecord {LAYOUT_KEY!r}; got "
            f"{list(content.array_records)} and {list(content.config_records)}"
        )
    return unpack_payload(content.array_records[ARRAYS_KEY],
                          content.config_records[LAYOUT_KEY])


def raw_nbytes(payload: Mapping[str, np.ndarray]) -> int:
    """Bytes of the raw tensor data alone (no keys, no headers)."""
    return int(sum(np.asarray(v).nbytes for v in payload.values()))


def serialized_nbytes(*records: InflatableObject) -> int:
    """Bytes of Flower's serialised form of ``records``, as carried inside a Message.

    Flower deflates a record into a tree of objects (the record's reference table,
    one header per Array, the Array data split into chunks); each distinct object
    travels once. This sums the deflated size of every distinct object in the trees.
    """
    seen: set[str] = set()
    total = 0
    stack: list[InflatableObject] = list(records)
    while stack:
        obj = stack.pop()
        if obj.object_id in seen:
            continue
        seen.add(obj.object_id)
        total += len(obj.deflate())
        stack.extend(obj.children.values() if obj.children else ())
    return total


def content_payload_nbytes(content: RecordDict) -> int:
    """Serialised bytes of the payload records (arrays + layout) in a Message content."""
    records: list[InflatableObject] = list(content.array_records.values())
    if LAYOUT_KEY in content.config_records:
        records.append(content.config_records[LAYOUT_KEY])
    return serialized_nbytes(*records)


def wire_nbytes(payload: Mapping[str, np.ndarray]) -> int:
    """Serialised bytes of ``payload`` in the wire format (arrays + layout)."""
    return serialized_nbytes(*pack_payload(payload))
