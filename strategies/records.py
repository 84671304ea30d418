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
from strategies.decoding import check_dtype_name, decode_flat_array, element_count, is_dim_list
from strategies.validation import PayloadSpec, preview_keys, validate_payload

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
#: Layout JSON length allowed per expected key (name, dtype, shape), and without a spec.
_LAYOUT_CHARS_PER_KEY = 1024
_MAX_LAYOUT_CHARS = 64 * 2**20
#: Size bound without a spec: only what a bytes object can hold.
_UNBOUNDED = 2**62

_preview = preview_keys


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


def _parse_layout(layout: object, max_chars: int) -> list[tuple[str, str, tuple[int, ...]]]:
    if not isinstance(layout, ConfigRecord):
        raise PayloadError(f"layout must be a ConfigRecord, got {type(layout).__name__}")
    if list(layout) != ["layout"]:
        raise PayloadError(f"layout record must hold exactly 'layout', got "
                           f"{sorted(layout)[:5]}")
    raw = layout["layout"]
    if not isinstance(raw, str):
        raise PayloadError("layout record lacks a 'layout' JSON string")
    if len(raw) > max_chars:
        raise PayloadError(f"layout of {len(raw)} characters exceeds the limit of {max_chars}")
    try:
        entries = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"layout is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(entries, list) or len(entries) > _MAX_LAYOUT_ENTRIES:
        raise PayloadError("layout must be a list of [key, dtype, shape] entries")
    out, seen = [], set()
    for entry in entries:
        ok = (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
              and isinstance(entry[1], str) and is_dim_list(entry[2]))
        if not ok:
            raise PayloadError(f"malformed layout entry {str(entry)[:80]!r}")
        if entry[0] in seen:
            raise PayloadError(f"duplicate key {entry[0][:80]!r} in layout")
        check_dtype_name(entry[1])
        seen.add(entry[0])
        out.append((entry[0], entry[1], tuple(entry[2])))
    return out


def _check_against_spec(entries: list[tuple[str, str, tuple[int, ...]]],
                        spec: PayloadSpec) -> None:
    """The layout must describe exactly the spec's keys, shapes and dtypes."""
    got = {key for key, _, _ in entries}
    if missing := set(spec.shapes) - got:
        raise PayloadError(f"missing keys: {_preview(missing)}")
    if extra := got - set(spec.shapes):
        raise PayloadError(f"unexpected keys: {_preview(extra)}")
    for key, dtype, shape in entries:
        if shape != tuple(spec.shapes[key]):
            raise PayloadError(f"{key!r}: shape {shape} != expected {tuple(spec.shapes[key])}")
        if dtype != spec.dtypes[key]:
            raise PayloadError(f"{key!r}: dtype {dtype} != expected {spec.dtypes[key]}")


def unpack_payload(arrays: object, layout: object, spec: PayloadSpec | None = None,
                   ) -> dict[str, np.ndarray]:
    """Rebuild ``{key: ndarray}``; the layout must describe the arrays exactly.

    Every size is checked against the layout (and ``spec``, when given: its keys,
    shapes, dtypes and byte limit) with Python integers *before* any array is
    decoded (:func:`strategies.decoding.decode_flat_array`), so a declared size can
    neither overflow int64 nor make numpy allocate.

    Raises
    ------
    PayloadError
        Wrong record types, a malformed or oversized layout, a layout that differs
        from ``spec``, an unknown or missing dtype group, an Array that is not a flat
        ``.npy`` of the declared size, or lengths that do not add up.
    """
    max_bytes = spec.max_bytes if spec is not None else _UNBOUNDED
    max_chars = (_LAYOUT_CHARS_PER_KEY * len(spec.shapes) + 1024 if spec is not None
                 else _MAX_LAYOUT_CHARS)
    if not isinstance(arrays, ArrayRecord):
        raise PayloadError(f"arrays must be an ArrayRecord, got {type(arrays).__name__}")
    entries = _parse_layout(layout, max_chars)
    if spec is not None:
        _check_against_spec(entries, spec)
    counts: dict[str, int] = {}
    for _, dtype, shape in entries:
        counts[dtype] = counts.get(dtype, 0) + element_count(shape)
    if set(arrays) != set(counts):
        raise PayloadError(f"array groups {sorted(arrays)[:5]} differ from the layout's "
                           f"dtypes {sorted(counts)}")
    total = sum(n * check_dtype_name(d).itemsize for d, n in counts.items())
    if total > max_bytes:
        raise PayloadError(f"layout declares {total} bytes, over the size limit of "
                           f"{max_bytes} bytes")
    flats = {dtype: decode_flat_array(arrays[dtype], dtype=dtype, max_bytes=max_bytes,
                                      count=counts[dtype]) for dtype in counts}
    offsets = dict.fromkeys(flats, 0)
    out: dict[str, np.ndarray] = {}
    for key, dtype, shape in entries:
        size = element_count(shape)
        start = offsets[dtype]
        out[key] = flats[dtype][start:start + size].reshape(shape)
        offsets[dtype] = start + size
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


def read_payload(content: RecordDict, spec: PayloadSpec | None = None
                 ) -> dict[str, np.ndarray]:
    """The payload a Message's content carries (see :func:`write_payload`).

    With ``spec`` (the server reading a client's reply), the layout is checked
    against it before anything is decoded, and the decoded payload is validated
    (:func:`strategies.validation.validate_payload`: finite values, size limit).

    Raises
    ------
    PayloadError
        Every way the content can fail to be a payload (see :func:`unpack_payload`).
    """
    if not isinstance(content, RecordDict):
        raise PayloadError(f"content must be a RecordDict, got {type(content).__name__}")
    if ARRAYS_KEY not in content.array_records or LAYOUT_KEY not in content.config_records:
        raise PayloadError(
            f"expected ArrayRecord {ARRAYS_KEY!r} and ConfigRecord {LAYOUT_KEY!r}; got "
            f"{list(content.array_records)} and {list(content.config_records)}"
        )
    payload = unpack_payload(content.array_records[ARRAYS_KEY],
                             content.config_records[LAYOUT_KEY], spec)
    if spec is not None:
        validate_payload(payload, spec)
    return payload


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
