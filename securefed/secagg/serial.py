"""Plain-value encodings of SecAgg+ configs, messages and client state.

A transport (Flower's ``ConfigRecord``, JSON, a file) carries only plain values: ints,
strings, bytes and lists of them. This module maps the protocol objects of
:mod:`securefed.secagg.messages` and the state of a
:class:`~securefed.secagg.client.SecAggClient` to and from ``dict[str, Value]`` with
exactly such values, so that the Flower layer (``strategies/secagg_records.py``, the
client mod) never touches protocol internals, and a client can resume between stages
from its persisted state (a SuperNode keeps it in ``context.state``).

Every decoder validates types and sizes and raises
:class:`~securefed.secagg.errors.ProtocolError` naming the bad field; the semantic
checks (stage, sender, neighbour sets) stay in the state machines. Shamir shares are
elements of ``GF(2**521 - 1)`` and travel as :data:`~securefed.secagg.messages.SHARE_BYTES`
big-endian bytes; a masked vector travels packed, ``ceil(bits / 8)`` little-endian bytes
per value (Bell et al. 2020, arXiv:2009.05807, count the same ``ceil(b/8)`` bytes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from securefed.exceptions import ConfigError
from securefed.secagg.errors import ProtocolError
from securefed.secagg.messages import (
    SHARE_BYTES,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeysBroadcast,
    MaskedInput,
    SecAggConfig,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    make_config,
)

__all__ = [
    "MESSAGE_CODECS",
    "config_from_dict",
    "config_to_dict",
    "decode_message",
    "encode_message",
    "pack_vector",
    "unpack_vector",
]

Value = int | float | str | bytes | bool | list[int] | list[bytes] | list[str]
Plain = dict[str, Value]

MAX_ID = 2**63 - 1


def _field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(data, Mapping):
        raise ProtocolError(f"expected a mapping of fields, got {type(data).__name__}")
    if key not in data:
        raise ProtocolError(f"field {key!r} is missing; fields present: {sorted(data)}")
    value = data[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ProtocolError(f"field {key!r} must be {kind}, got bool")
    if not isinstance(value, kind):
        raise ProtocolError(f"field {key!r} has type {type(value).__name__}")
    return value


def _id(data: Mapping[str, Any], key: str) -> int:
    value = _field(data, key, int)
    if not 1 <= value <= MAX_ID:
        raise ProtocolError(f"field {key!r} = {value} is not a client id in [1, 2**63)")
    return int(value)


def _ids(data: Mapping[str, Any], key: str) -> list[int]:
    values = _field(data, key, list)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ID:
            raise ProtocolError(f"field {key!r} holds {v!r}, not a client id")
    if len(set(values)) != len(values):
        raise ProtocolError(f"field {key!r} repeats a client id")
    return [int(v) for v in values]


def _blobs(data: Mapping[str, Any], key: str, count: int, size: int | None = None) -> list[bytes]:
    values = _field(data, key, list)
    if len(values) != count:
        raise ProtocolError(f"field {key!r} has {len(values)} entries, expected {count}")
    for v in values:
        if not isinstance(v, bytes) or (size is not None and len(v) != size):
            want = f"{size} bytes" if size is not None else "bytes"
            raise ProtocolError(f"field {key!r} holds an entry that is not {want}")
    return list(values)


def _names(data: Mapping[str, Any], key: str, count: int) -> list[str]:
    values = _field(data, key, list)
    if len(values) != count or not all(isinstance(v, str) for v in values):
        raise ProtocolError(f"field {key!r} must hold {count} strings")
    return list(values)


def _signatures(data: Mapping[str, Any], ids_key: str, key: str) -> dict[int, bytes]:
    ids = _ids(data, ids_key)
    return dict(zip(ids, _blobs(data, key, len(ids)), strict=True))


def _shares(data: Mapping[str, Any], ids_key: str, key: str) -> dict[int, int]:
    ids = _ids(data, ids_key)
    blobs = _blobs(data, key, len(ids), SHARE_BYTES)
    return {i: int.from_bytes(b, "big") for i, b in zip(ids, blobs, strict=True)}


def pack_vector(vector: npt.NDArray[np.uint64], bits: int) -> bytes:
    """``ceil(bits / 8)`` little-endian bytes per value of a uint64 vector."""
    width = math.ceil(bits / 8)
    raw = np.ascontiguousarray(vector, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return raw[:, :width].tobytes()


def unpack_vector(data: bytes, bits: int) -> npt.NDArray[np.uint64]:
    """Inverse of :func:`pack_vector`; the length must be a multiple of the width."""
    width = math.ceil(bits / 8)
    if not isinstance(data, bytes) or len(data) % width:
        raise ProtocolError(f"packed vector is not a whole number of {width}-byte values")
    raw = np.zeros((len(data) // width, 8), dtype=np.uint8)
    raw[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(-1, width)
    return raw.reshape(-1).view("<u8").astype(np.uint64)


def config_to_dict(config: SecAggConfig) -> Plain:
    """Every parameter of a :class:`SecAggConfig` as plain values."""
    q = config.quantization
    return {
        "num-clients": q.num_clients,
        "vector-length": config.vector_length,
        "clipping-range": q.clipping_range,
        "bits": q.bits,
        "q-max": q.grid_max,
        "max-weight": q.max_weight,
        "on-overflow": q.on_overflow,
        "degree": config.graph.degree,
        "threshold": config.graph.threshold,
        "round-id": config.round_id,
    }


def config_from_dict(data: Mapping[str, Any]) -> SecAggConfig:
    """Rebuild and re-validate a config from :func:`config_to_dict` output.

    Raises
    ------
    ProtocolError
        If a field is missing or mistyped, or the values do not form a valid config.
    """
    try:
        config = make_config(
            _field(data, "num-clients", int),
            _field(data, "vector-length", int),
            _field(data, "clipping-range", float),
            _field(data, "bits", int),
            degree=_field(data, "degree", int),
            threshold=_field(data, "threshold", int),
            max_weight=_field(data, "max-weight", int),
            on_overflow=_field(data, "on-overflow", str),  # type: ignore[arg-type]
            round_id=_field(data, "round-id", int),
        )
    except ConfigError as exc:
        raise ProtocolError(f"invalid SecAgg+ config: {exc}") from None
    if config.quantization.grid_max != _field(data, "q-max", int):
        raise ProtocolError("field 'q-max' does not match the grid the config implies")
    return config


def _encode_advertise(m: AdvertiseKeys) -> Plain:
    return {"sender": m.sender, "c-public": m.c_public, "s-public": m.s_public,
            "name": m.name, "signature": m.signature}


def _decode_advertise(d: Mapping[str, Any]) -> AdvertiseKeys:
    return AdvertiseKeys(_id(d, "sender"), _field(d, "c-public", bytes),
                         _field(d, "s-public", bytes), _field(d, "name", str),
                         _field(d, "signature", bytes))


def _encode_broadcast(m: KeysBroadcast) -> Plain:
    ids, signed, members = sorted(m.neighbours), sorted(m.signatures), sorted(m.members)
    return {"receiver": m.receiver, "ids": ids,
            "c-public": [m.neighbours[i][0] for i in ids],
            "s-public": [m.neighbours[i][1] for i in ids],
            "signed-ids": signed, "signatures": [m.signatures[i] for i in signed],
            "member-ids": members, "member-names": [m.members[i] for i in members]}


def _decode_broadcast(d: Mapping[str, Any]) -> KeysBroadcast:
    ids = _ids(d, "ids")
    c_keys, s_keys = _blobs(d, "c-public", len(ids)), _blobs(d, "s-public", len(ids))
    neighbours = {i: (c, s) for i, c, s in zip(ids, c_keys, s_keys, strict=True)}
    members = _ids(d, "member-ids")
    names = _names(d, "member-names", len(members))
    return KeysBroadcast(_id(d, "receiver"), neighbours,
                         _signatures(d, "signed-ids", "signatures"),
                         dict(zip(members, names, strict=True)))


def _encode_share_keys(m: ShareKeys) -> Plain:
    ids = sorted(m.ciphertexts)
    return {"sender": m.sender, "to": ids, "ciphertexts": [m.ciphertexts[i] for i in ids]}


def _decode_share_keys(d: Mapping[str, Any]) -> ShareKeys:
    ids = _ids(d, "to")
    cts = _blobs(d, "ciphertexts", len(ids))
    return ShareKeys(_id(d, "sender"), dict(zip(ids, cts, strict=True)))


def _encode_bundle(m: ShareBundle) -> Plain:
    ids = sorted(m.ciphertexts)
    return {"receiver": m.receiver, "from": ids, "ciphertexts": [m.ciphertexts[i] for i in ids]}


def _decode_bundle(d: Mapping[str, Any]) -> ShareBundle:
    ids = _ids(d, "from")
    cts = _blobs(d, "ciphertexts", len(ids))
    return ShareBundle(_id(d, "receiver"), dict(zip(ids, cts, strict=True)))


def _encode_masked(m: MaskedInput) -> Plain:
    return {"sender": m.sender, "bits": m.bits, "vector": pack_vector(m.vector, m.bits)}


def _decode_masked(d: Mapping[str, Any]) -> MaskedInput:
    bits = _field(d, "bits", int)
    if not 1 <= bits <= 64:
        raise ProtocolError(f"field 'bits' = {bits} is outside [1, 64]")
    return MaskedInput(_id(d, "sender"), unpack_vector(_field(d, "vector", bytes), bits), bits)


def _encode_consistency_request(m: ConsistencyRequest) -> Plain:
    return {"receiver": m.receiver, "survivors": sorted(m.survivors)}


def _decode_consistency_request(d: Mapping[str, Any]) -> ConsistencyRequest:
    return ConsistencyRequest(_id(d, "receiver"), frozenset(_ids(d, "survivors")))


def _encode_consistency_signature(m: ConsistencySignature) -> Plain:
    return {"sender": m.sender, "signature": m.signature}


def _decode_consistency_signature(d: Mapping[str, Any]) -> ConsistencySignature:
    return ConsistencySignature(_id(d, "sender"), _field(d, "signature", bytes))


def _encode_request(m: UnmaskRequest) -> Plain:
    signed = sorted(m.signatures)
    return {"receiver": m.receiver, "survivors": sorted(m.survivors),
            "dropped": sorted(m.dropped), "signed-ids": signed,
            "signatures": [m.signatures[i] for i in signed]}


def _decode_request(d: Mapping[str, Any]) -> UnmaskRequest:
    return UnmaskRequest(_id(d, "receiver"), frozenset(_ids(d, "survivors")),
                         frozenset(_ids(d, "dropped")),
                         _signatures(d, "signed-ids", "signatures"))


def _encode_response(m: UnmaskResponse) -> Plain:
    b_ids, s_ids = sorted(m.b_shares), sorted(m.s_shares)
    return {
        "sender": m.sender,
        "b-ids": b_ids,
        "b-shares": [m.b_shares[i].to_bytes(SHARE_BYTES, "big") for i in b_ids],
        "s-ids": s_ids,
        "s-shares": [m.s_shares[i].to_bytes(SHARE_BYTES, "big") for i in s_ids],
    }


def _decode_response(d: Mapping[str, Any]) -> UnmaskResponse:
    return UnmaskResponse(_id(d, "sender"), _shares(d, "b-ids", "b-shares"),
                          _shares(d, "s-ids", "s-shares"))


MESSAGE_CODECS: dict[str, tuple[type, Any, Any]] = {
    "advertise-keys": (AdvertiseKeys, _encode_advertise, _decode_advertise),
    "keys-broadcast": (KeysBroadcast, _encode_broadcast, _decode_broadcast),
    "share-keys": (ShareKeys, _encode_share_keys, _decode_share_keys),
    "share-bundle": (ShareBundle, _encode_bundle, _decode_bundle),
    "masked-input": (MaskedInput, _encode_masked, _decode_masked),
    "consistency-request": (ConsistencyRequest, _encode_consistency_request,
                            _decode_consistency_request),
    "consistency-signature": (ConsistencySignature, _encode_consistency_signature,
                              _decode_consistency_signature),
    "unmask-request": (UnmaskRequest, _encode_request, _decode_request),
    "unmask-response": (UnmaskResponse, _encode_response, _decode_response),
}
"""``{kind: (message class, encoder, decoder)}`` for every protocol message."""

_KIND_OF = {cls: kind for kind, (cls, _, _) in MESSAGE_CODECS.items()}


def encode_message(message: object) -> Plain:
    """A protocol message as plain values, with its kind under ``"kind"``."""
    kind = _KIND_OF.get(type(message))
    if kind is None:
        raise ProtocolError(f"not a SecAgg+ message: {type(message).__name__}")
    out: Plain = {"kind": kind}
    out.update(MESSAGE_CODECS[kind][1](message))
    return out


def decode_message(data: Mapping[str, Any], expected: str) -> Any:
    """Decode plain values into the message of kind ``expected``.

    Raises
    ------
    ProtocolError
        If the kind differs from ``expected`` or any field is missing or malformed.
    """
    if expected not in MESSAGE_CODECS:
        raise ProtocolError(f"unknown message kind {expected!r}; known: {sorted(MESSAGE_CODECS)}")
    kind = _field(data, "kind", str)
    if kind != expected:
        raise ProtocolError(f"expected a {expected!r} message, got {kind!r}")
    try:
        return MESSAGE_CODECS[kind][2](data)
    except (ValueError, TypeError, OverflowError) as exc:  # numpy/bytes conversion
        raise ProtocolError(f"malformed {kind!r} message: {exc}") from None
