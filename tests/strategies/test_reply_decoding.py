"""Finding 5 of issue 10, one test per reproduction: bounded weights, a finite mean,
and decoding that checks every size before numpy sees a byte."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from securefed.exceptions import AggregationError, ConfigError, PayloadError
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.decoding import decode_flat_array
from strategies.records import pack_payload, read_payload, unpack_payload, write_payload
from strategies.validation import PayloadSpec
from tests.strategies.hostile import GLOBAL, honest_content, reply_to
from tests.strategies.test_fuzz_replies import GRID, _bits, _start

SPEC = PayloadSpec.of(GLOBAL, max_bytes=2**20)


@pytest.fixture
def no_numpy_load(monkeypatch):
    """Fail the test if anything hands reply bytes to numpy's .npy loader."""
    def refuse(*args, **kwargs):
        raise AssertionError("np.load was called on a reply")

    monkeypatch.setattr(np, "load", refuse)
    monkeypatch.setattr(Array, "numpy", refuse)


def _content(**arrays: Array) -> RecordDict:
    record, layout = pack_payload(GLOBAL)
    for name, array in arrays.items():
        record[name] = array
    return RecordDict({"arrays": record, "layout": layout})


@pytest.mark.parametrize("shape", [(2**63,), (2**70,), (2**62,), (-1,), (12, 1)])
def test_a_declared_shape_that_overflows_int64_is_refused_before_numpy(shape, no_numpy_load
                                                                       ) -> None:
    array = Array(dtype="float32", shape=(17,), stype="numpy.ndarray", data=b"\x93NUMPY")
    array.__dict__["shape"] = shape
    with pytest.raises(PayloadError, match=r"declared shape|declares"):
        read_payload(_content(float32=array), SPEC)


def test_another_serialisation_type_is_a_typed_rejection(no_numpy_load) -> None:
    array = Array(dtype="float32", shape=(17,), stype="torch.Tensor", data=b"\x00" * 68)
    with pytest.raises(PayloadError, match=r"serialisation type 'torch\.Tensor'"):
        read_payload(_content(float32=array), SPEC)


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 40,
                                  b"\x93NUMPY\x03\x00" + b"\x00" * 200])
def test_garbage_bytes_are_a_typed_rejection(data: bytes) -> None:
    array = Array(dtype="float32", shape=(17,), stype="numpy.ndarray", data=data)
    with pytest.raises(PayloadError):
        read_payload(_content(float32=array), SPEC)


def test_an_npy_header_declaring_a_huge_array_allocates_nothing() -> None:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 68
    array = Array(dtype="float32", shape=(17,), stype="numpy.ndarray", data=data)
    with pytest.raises(PayloadError, match="header shape"):
        decode_flat_array(array, dtype="float32", max_bytes=2**20, count=17)


def test_the_size_limit_applies_before_deserialising(no_numpy_load) -> None:
    small = PayloadSpec.of(GLOBAL, max_bytes=32)  # the global itself is 84 bytes
    with pytest.raises(PayloadError, match="over the size limit of 32 bytes"):
        read_payload(RecordDict(write_payload(GLOBAL)), small)
    padded = Array(dtype="float32", shape=(17,), stype="numpy.ndarray",
                   data=b"\x93NUMPY" + b"\x00" * (2**21))
    with pytest.raises(PayloadError, match="exceed the size limit"):
        read_payload(_content(float32=padded), SPEC)


def test_a_client_reading_a_hostile_server_message_gets_a_payload_error() -> None:
    """Without a spec (a client reading the global), decoding is as strict."""
    arrays, layout = pack_payload(GLOBAL)
    arrays["float32"].__dict__["data"] = b"\x93NUMPY\x01\x00" + b"\x00" * 300
    with pytest.raises(PayloadError):
        unpack_payload(arrays, layout)
    with pytest.raises(PayloadError, match="ConfigRecord"):
        unpack_payload(arrays, MetricRecord({"layout": 1}))
    with pytest.raises(PayloadError, match="ArrayRecord"):
        unpack_payload(ConfigRecord({"a": 1}), layout)


def test_a_valid_payload_round_trips_exactly() -> None:
    out = read_payload(RecordDict(write_payload(GLOBAL)), SPEC)
    assert {k: v.tobytes() for k, v in out.items()} == {k: v.tobytes() for k, v in
                                                         GLOBAL.items()}
    buf = io.BytesIO()
    np.save(buf, np.arange(3, dtype=np.float32))
    flat = decode_flat_array(Array(dtype="float32", shape=(3,), stype="numpy.ndarray",
                                   data=buf.getvalue()), dtype="float32", max_bytes=12)
    assert flat.flags.writeable and flat.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("weight", [0, -1, 1e308, float("inf"), 3.0, 2.5, 1001, 2**63,
                                    [1, 2]])
def test_a_weight_outside_1_to_max_weight_is_rejected_with_its_reason(weight) -> None:
    strategy, adapter, _arrays, instructions = _start("plain", 0)
    rng = np.random.default_rng(0)
    hostile = honest_content(rng)
    metrics = MetricRecord()
    metrics.__dict__["_data"].update({**hostile["metrics"], "num-examples": weight})
    hostile["metrics"] = metrics
    honest = honest_content(rng)
    _result, _ = strategy.aggregate_train(1, [reply_to(instructions[0], honest),
                                             reply_to(instructions[1], hostile)])
    stats = adapter.history[-1]
    node = int(instructions[1].metadata.dst_node_id)
    assert "must be an int in [1, max_weight=1000]" in stats.rejected[node]
    assert stats.accepted == [int(instructions[0].metadata.dst_node_id)]


@pytest.mark.parametrize("weight", [1, 1000])
def test_weights_at_the_bounds_are_accepted(weight: int) -> None:
    strategy, adapter, _, instructions = _start("plain", 0)
    content = honest_content(np.random.default_rng(0))
    content["metrics"] = MetricRecord({"num-examples": weight})
    strategy.aggregate_train(1, [reply_to(instructions[0], content)])
    assert adapter.history[-1].accepted == [int(instructions[0].metadata.dst_node_id)]


def test_max_weight_must_be_a_positive_int() -> None:
    with pytest.raises(ConfigError, match="max_weight"):
        AdapterFedAvg(clients_per_round=1, min_replies=1, max_weight=0,
                      rng=np.random.default_rng(0))


def test_a_non_finite_mean_is_an_aggregation_error_and_the_global_is_unchanged() -> None:
    """Finite float64 replies whose weighted sum overflows: nothing replaces the global."""
    strategy, adapter, arrays, instructions = _start("plain", 0)
    before = _bits(arrays)
    replies = []
    for instruction in instructions[:2]:
        content = honest_content(np.random.default_rng(1))
        payload = {**GLOBAL, "scale": np.array([1.7e308, 0.0])}
        content.update(write_payload(payload))
        content["metrics"] = MetricRecord({"num-examples": 1})
        replies.append(reply_to(instruction, content))
    with pytest.raises(AggregationError, match=r"non-finite.*global adapter is unchanged"):
        strategy.aggregate_train(1, replies)
    assert _bits(arrays) == before and len(adapter.history[-1].accepted) == 2


def test_hostile_evaluation_weights_and_metrics_are_rejected() -> None:
    adapter = AdapterFedAvg(clients_per_round=3, min_replies=1, evaluate_clients=3,
                            rng=np.random.default_rng(0))
    instructions = [Message(RecordDict(), dst_node_id=n, message_type="evaluate",
                            group_id="1") for n in GRID.get_node_ids()[:4]]
    from tests.strategies.hostile import with_id

    def reply(i: int, **metrics: object) -> Message:
        record = MetricRecord()
        record.__dict__["_data"].update(metrics)
        return reply_to(with_id(instructions[i]), {"metrics": record}, wire=False)

    metrics = adapter.aggregate_evaluate(1, [
        reply(0, **{"num-examples": 10, "eval-accuracy": 0.5}),
        reply(1, **{"num-examples": 1e308, "eval-accuracy": 0.0}),
        reply(2, **{"num-examples": 10, "eval-accuracy": float("nan")}),
        reply(3, **{"num-examples": 10, "eval-accuracy": [1.0]}),
    ])
    assert metrics is not None and dict(metrics) == {"eval-accuracy": 0.5}


def test_a_node_replying_twice_has_both_replies_dropped() -> None:
    strategy, adapter, _, instructions = _start("plain", 0)
    rng = np.random.default_rng(0)
    twice = [reply_to(instructions[1], honest_content(rng)) for _ in range(2)]
    strategy.aggregate_train(1, [reply_to(instructions[0], honest_content(rng)), *twice])
    stats = adapter.history[-1]
    assert "2 replies this round" in stats.rejected[int(instructions[1].metadata.dst_node_id)]
    assert len(stats.accepted) == 1


def test_a_record_of_the_wrong_type_is_rejected() -> None:
    strategy, _adapter, _, instructions = _start("plain", 0)
    content = honest_content(np.random.default_rng(0))
    content["metrics"] = ConfigRecord({"num-examples": "7"})
    with pytest.raises(AggregationError, match="'metrics': 'ConfigRecord'"):
        strategy.aggregate_train(1, [reply_to(instructions[0], content)])
    content["metrics"] = MetricRecord({"num-examples": 7})
    content["extra"] = ArrayRecord()
    with pytest.raises(AggregationError, match="'extra': 'ArrayRecord'"):
        strategy.aggregate_train(1, [reply_to(instructions[0], content)])
