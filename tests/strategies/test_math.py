"""Numpy aggregation, validation and record conversion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from securefed.exceptions import AggregationError, PayloadError
from strategies.aggregate import weighted_mean_by_key
from strategies.records import payload_to_record, raw_nbytes, record_to_payload, serialized_nbytes
from strategies.validation import PayloadSpec, validate_payload

floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(arrays(np.float32, (3, 2), elements=floats), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_weighted_mean_matches_numpy(data, seed) -> None:
    w = np.random.default_rng(seed).uniform(0.1, 5, size=len(data))
    payloads = [{"a": d, "b": d[0] * 2} for d in data]
    out = weighted_mean_by_key(payloads, list(w))
    np.testing.assert_allclose(out["a"], np.average(np.stack(data), axis=0, weights=w),
                               rtol=1e-5, atol=1e-3)
    assert out["a"].dtype == np.float32


def test_weighted_mean_rejects_bad_weights() -> None:
    p = [{"a": np.ones(2, np.float32)}]
    for w in ([0.0], [-1.0], [float("nan")]):
        with pytest.raises(AggregationError):
            weighted_mean_by_key(p, w)
    with pytest.raises(AggregationError):
        weighted_mean_by_key([], [])


def test_record_round_trip_keeps_keys_order_values() -> None:
    payload = {"z": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(1, np.float32)}
    back = record_to_payload(payload_to_record(payload))
    assert list(back) == ["z", "a"]
    for k in payload:
        np.testing.assert_array_equal(back[k], payload[k])


def test_serialized_bytes_cover_raw_bytes_with_small_overhead() -> None:
    payload = {f"t{i}": np.random.default_rng(i).standard_normal((384, 8)).astype(np.float32)
               for i in range(24)}
    ser, raw = serialized_nbytes(payload_to_record(payload)), raw_nbytes(payload)
    assert raw < ser < raw * 1.05


def test_validate_payload_names_the_key() -> None:
    spec = PayloadSpec.of({"w": np.zeros((2, 2), np.float32)}, max_bytes=1000)
    validate_payload({"w": np.ones((2, 2), np.float32)}, spec)
    cases = {
        "missing keys: 'w'": {},
        "unexpected keys: 'v'": {"w": np.ones((2, 2), np.float32), "v": np.ones(1)},
        "'w': shape": {"w": np.ones((4,), np.float32)},
        "'w': dtype": {"w": np.ones((2, 2), np.float16)},
        "'w': 1 non-finite": {"w": np.array([[0, 1], [np.inf, 2]], np.float32)},
        "'w': expected ndarray": {"w": [[0, 1], [1, 2]]},
    }
    for msg, payload in cases.items():
        with pytest.raises(PayloadError, match=msg):
            validate_payload(payload, spec)
    small = PayloadSpec.of({"w": np.zeros((2, 2), np.float32)}, max_bytes=8)
    with pytest.raises(PayloadError, match="size limit"):
        validate_payload({"w": np.zeros((2, 2), np.float32)}, small)


def test_packed_wire_format_round_trips_by_key_and_is_compact() -> None:
    from strategies.records import pack_payload, unpack_payload, wire_nbytes

    rng = np.random.default_rng(0)
    payload = {f"layer.{i}.lora_{ab}.weight": rng.standard_normal(
        (8, 384) if ab == "A" else (384, 8)).astype(np.float32)
        for i in range(6) for ab in "AB"}
    payload["steps"] = np.arange(3, dtype=np.int64)
    back = unpack_payload(*pack_payload(payload))
    assert list(back) == list(payload)
    for k in payload:
        np.testing.assert_array_equal(back[k], payload[k])
        assert back[k].dtype == payload[k].dtype
    overhead = wire_nbytes(payload) / raw_nbytes(payload) - 1
    assert 0 < overhead < 0.02


@pytest.mark.parametrize(("layout", "match"), [
    ('[["a", "float32", [2, 2]]]', "declares 6 elements, the layout describes 4"),
    ('[["a", "float32", [9]]]', "declares 6 elements, the layout describes 9"),
    ('[["a", "float64", [6]]]', "differ from the layout's dtypes"),
    ('[["a", "float32", [3]], ["a", "float32", [3]]]', "duplicate key"),
    ('[["a", "float32", [-6]]]', "malformed layout entry"),
    ('{"a": 1}', "list of"),
    ("not json", "not valid JSON"),
])
def test_malformed_layout_is_rejected(layout, match) -> None:
    from flwr.app import ConfigRecord

    from strategies.records import pack_payload, unpack_payload

    arrays, _ = pack_payload({"a": np.zeros(6, np.float32)})
    with pytest.raises(PayloadError, match=match):
        unpack_payload(arrays, ConfigRecord({"layout": layout}))
