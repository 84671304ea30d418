"""Hostile plaintext train replies: a seeded generator of mutations of a valid reply.

Every mutation in :data:`MUTATIONS` turns a valid reply into one the server must
reject (finding 5 of issue 10 and its neighbours): a weight that is not an int in
``[1, max_weight]``, NaN/Inf, a wrong dtype or shape, garbage bytes, an Array whose
declared size overflows int64, another serialisation type, missing or extra keys and
records, metrics of the wrong type. The fuzz tests draw from it with a seeded
``numpy.random.Generator``; nothing here is random without that generator.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from securefed.app.grid import transport
from strategies.records import write_payload

__all__ = ["GLOBAL", "IN_PROCESS_ONLY", "MAX_WEIGHT", "MUTATIONS", "honest_content",
           "hostile_content", "reply_to", "with_id"]

#: The global payload of every fuzz round: two dtype groups, three tensors.
GLOBAL = {"lora_A": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
          "head.bias": np.arange(5, dtype=np.float32) / 10,
          "scale": np.array([0.5, -0.25], dtype=np.float64)}
MAX_WEIGHT = 1000

Content = dict[str, object]
Mutation = Callable[[Content, np.random.Generator], Content]


def honest_payload(rng: np.random.Generator, scale: float = 0.01) -> dict[str, np.ndarray]:
    """The global plus a small update (norm well below 1)."""
    return {k: (v + rng.normal(0, scale, v.shape)).astype(v.dtype) for k, v in GLOBAL.items()}


def honest_content(rng: np.random.Generator, *, extra_metrics: Mapping[str, float] | None = None
                   ) -> Content:
    """A valid train reply's records (arrays, layout, metrics) as a plain dict."""
    metrics = {"num-examples": int(rng.integers(1, MAX_WEIGHT + 1)),
               "train-loss": float(rng.random()), **(extra_metrics or {})}
    return {**write_payload(honest_payload(rng)), "metrics": MetricRecord(metrics)}


# ------------------------------------------------------------------ mutations
def _payload_edit(edit: Callable[[dict[str, np.ndarray], np.random.Generator], None]
                  ) -> Mutation:
    def mutate(content: Content, rng: np.random.Generator) -> Content:
        payload = honest_payload(rng)
        edit(payload, rng)
        return {**content, **write_payload(payload)}
    return mutate


def _key(rng: np.random.Generator) -> str:
    return sorted(GLOBAL)[int(rng.integers(len(GLOBAL)))]


def _non_finite(payload: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    key = _key(rng)
    flat = payload[key].reshape(-1).copy()
    flat[int(rng.integers(flat.size))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
    payload[key] = flat.reshape(payload[key].shape)


def _wrong_dtype(payload: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    key = _key(rng)
    dtypes = [d for d in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")
              if d != str(payload[key].dtype)]
    payload[key] = payload[key].astype(dtypes[int(rng.integers(len(dtypes)))])


def _wrong_shape(payload: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    key = _key(rng)
    value = payload[key]
    choice = int(rng.integers(4))
    if choice == 0 and value.ndim == 2:
        payload[key] = value.T.copy()
    elif choice == 1:
        payload[key] = value.reshape(-1, 1) if value.ndim == 1 else value.reshape(-1)
    elif choice == 2:
        payload[key] = value.reshape(-1)[:-1]
    else:
        payload[key] = np.concatenate([value.reshape(-1), value.reshape(-1)[:1]])


def _missing_key(payload: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    del payload[_key(rng)]


def _extra_key(payload: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    payload[f"extra.{int(rng.integers(100))}"] = np.zeros(int(rng.integers(0, 4)), np.float32)


def _renamed_key(payload: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    key = _key(rng)
    payload[key + "_"] = payload.pop(key)


def _weight(value: object) -> Mutation:
    def mutate(content: Content, rng: np.random.Generator) -> Content:
        metrics = dict(content["metrics"])  # type: ignore[call-overload]
        metrics["num-examples"] = value
        return {**content, "metrics": _raw_metrics(metrics)}
    return mutate


def _raw_metrics(values: Mapping[str, object]) -> MetricRecord:
    """A MetricRecord holding ``values`` even where Flower's type check would refuse them
    (an in-process peer can hand the server any object)."""
    record = MetricRecord()
    record.__dict__["_data"].update(values)
    return record


def _metric(value: object) -> Mutation:
    def mutate(content: Content, rng: np.random.Generator) -> Content:
        metrics = dict(content["metrics"])  # type: ignore[call-overload]
        metrics["train-loss"] = value
        return {**content, "metrics": _raw_metrics(metrics)}
    return mutate


def _drop(name: str) -> Mutation:
    def mutate(content: Content, rng: np.random.Generator) -> Content:
        return {k: v for k, v in content.items() if k != name}
    return mutate


def _add(name: str, record: Callable[[], object]) -> Mutation:
    def mutate(content: Content, rng: np.random.Generator) -> Content:
        return {**content, name: record()}
    return mutate


def _swap_type(name: str) -> Mutation:
    """The record under ``name`` replaced by one of another type (same data if possible)."""
    def mutate(content: Content, rng: np.random.Generator) -> Content:
        options: list[object] = [ConfigRecord({"num-examples": "7"}),
                                 MetricRecord({"num-examples": 7}),
                                 ArrayRecord({"float32": Array(np.zeros(3, np.float32))})]
        current = type(content[name])
        choices = [o for o in options if type(o) is not current]
        return {**content, name: choices[int(rng.integers(len(choices)))]}
    return mutate


def _group(content: Content) -> tuple[ArrayRecord, str, Array]:
    arrays = content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    fresh = ArrayRecord({k: Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype,
                                  data=a.data) for k, a in arrays.items()})
    name = "float32"
    return fresh, name, fresh[name]


def _array_field(field: str, values: list[object]) -> Mutation:
    def mutate(content: Content, rng: np.random.Generator) -> Content:
        arrays, _, array = _group(content)
        array.__dict__[field] = values[int(rng.integers(len(values)))]
        return {**content, "arrays": arrays}
    return mutate


def _npy(header: str, body: bytes = b"") -> bytes:
    raw = header.encode("latin1")
    pad = 64 - (10 + len(raw) + 1) % 64
    raw += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + body


def _garbage_data(content: Content, rng: np.random.Generator) -> Content:
    arrays, _, array = _group(content)
    n = int(array.shape[0])
    data = array.data
    choice = int(rng.integers(9))
    if choice == 0:
        new = rng.bytes(int(rng.integers(0, 200)))
    elif choice == 1:
        new = data[: int(rng.integers(0, len(data)))]
    elif choice == 2:
        new = data + rng.bytes(int(rng.integers(1, 16)))
    elif choice == 3:  # a valid .npy of another shape
        buf = io.BytesIO()
        np.save(buf, np.zeros(n + 1, np.float32))
        new = buf.getvalue()
    elif choice == 4:  # big-endian or another dtype in the header
        descr = ["'>f4'", "'<f8'", "'|O'", "'<i4'", "[('a', '<f4')]"][int(rng.integers(5))]
        new = _npy(f"{{'descr': {descr}, 'fortran_order': False, 'shape': ({n},), }}",
                   data[-4 * n:])
    elif choice == 5:  # a header that declares a huge array
        dim = [2**40, 2**62, 2**63 + 5, 10**30][int(rng.integers(4))]
        new = _npy(f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({dim},), }}",
                   data[-4 * n:])
    elif choice == 6:  # a header that is not a dict literal
        new = _npy("[" * 3000 + "]" * 3000, data[-4 * n:])
    elif choice == 7:  # npy version 9.9
        new = b"\x93NUMPY\x09\x09" + data[8:]
    else:  # a header with code in it
        new = _npy("{'descr': __import__('os').getcwd(), 'shape': (1,)}", data[-4 * n:])
    array.__dict__["data"] = new
    return {**content, "arrays": arrays}


def _groups(content: Content, rng: np.random.Generator) -> Content:
    arrays, name, _array = _group(content)
    choice = int(rng.integers(3))
    if choice == 0:
        del arrays["float64"]
    elif choice == 1:
        arrays["int8"] = Array(np.zeros(2, np.int8))
    else:
        arrays["float16"] = arrays.pop(name)
    return {**content, "arrays": arrays}


def _layout(content: Content, rng: np.random.Generator) -> Content:
    layout = json.loads(content["layout"]["layout"])  # type: ignore[index]
    choice = int(rng.integers(9))
    if choice == 0:
        raw: object = "not json {"
    elif choice == 1:
        layout[0][2] = [2**62, 2**62]
        raw = json.dumps(layout)
    elif choice == 2:
        layout[0][2] = [-1, -12]
        raw = json.dumps(layout)
    elif choice == 3:
        raw = json.dumps([*layout, layout[0]])
    elif choice == 4:
        raw = json.dumps({"a": 1})
    elif choice == 5:
        raw = int(rng.integers(100))
    elif choice == 6:
        raw = "[" * 100_000 + "]" * 100_000
    elif choice == 7:
        layout[0][1] = ["object", "U8", "V4", "nonsense", "f4,f4"][int(rng.integers(5))]
        raw = json.dumps(layout)
    else:
        layout[0][2] = [True] * len(layout[0][2])
        raw = json.dumps(layout)
    record = ConfigRecord()
    record.__dict__["_data"]["layout"] = raw
    if int(rng.integers(4)) == 0:
        record.__dict__["_data"]["x"] = "extra"
    return {**content, "layout": record}


MUTATIONS: dict[str, Mutation] = {
    "weight-0": _weight(0), "weight--1": _weight(-1), "weight-1e308": _weight(1e308),
    "weight-inf": _weight(float("inf")), "weight-nan": _weight(float("nan")),
    "weight-true": _weight(True), "weight-float": _weight(3.0), "weight-2.5": _weight(2.5),
    "weight-str": _weight("7"), "weight-over-max": _weight(MAX_WEIGHT + 1),
    "weight-2**63": _weight(2**63), "weight-2**200": _weight(2**200),
    "weight-list": _weight([1, 2]), "weight-none": _weight(None),
    "weight-missing": lambda c, r: {**c, "metrics": _raw_metrics(
        {k: v for k, v in c["metrics"].items() if k != "num-examples"})},  # type: ignore[attr-defined]
    "metric-nan": _metric(float("nan")), "metric-inf": _metric(-float("inf")),
    "metric-list": _metric([1.0, 2.0]), "metric-str": _metric("low"),
    "metric-huge-int": _metric(2**2000), "metric-bool": _metric(False),
    "metric-dict": _metric({"a": 1}),
    "non-finite": _payload_edit(_non_finite), "wrong-dtype": _payload_edit(_wrong_dtype),
    "wrong-shape": _payload_edit(_wrong_shape), "missing-key": _payload_edit(_missing_key),
    "extra-key": _payload_edit(_extra_key), "renamed-key": _payload_edit(_renamed_key),
    "no-arrays": _drop("arrays"), "no-layout": _drop("layout"), "no-metrics": _drop("metrics"),
    "extra-arrays": _add("arrays2", lambda: ArrayRecord({"float32": Array(np.zeros(1))})),
    "extra-config": _add("config", lambda: ConfigRecord({"a": 1})),
    "extra-metrics": _add("metrics2", lambda: MetricRecord({"num-examples": 5})),
    "arrays-type": _swap_type("arrays"), "layout-type": _swap_type("layout"),
    "metrics-type": _swap_type("metrics"),
    "stype": _array_field("stype", ["torch.Tensor", "", "numpy.ndarray ", None, 3]),
    "declared-dtype": _array_field("dtype", ["float64", "<f4", "object", None, 0]),
    "declared-shape": _array_field("shape", [(2**63,), (2**70,), (-1,), (17, 1), (), (True,),
                                             (1.5,), (None,), "17", (17.0,)]),
    "data-type": _array_field("data", ["text", bytearray(b"\x93NUMPY"), None, 17]),
    "garbage-data": _garbage_data, "array-groups": _groups, "layout": _layout,
}


#: Mutations Flower's wire format undoes (a bool metric travels as an int): they reach
#: the server only in process, so :func:`reply_to` must not transport them.
IN_PROCESS_ONLY = frozenset({"weight-true", "metric-bool"})


def hostile_content(rng: np.random.Generator) -> tuple[str, Content]:
    """A mutated valid reply (one or two mutations) and the mutations' names."""
    names = sorted(MUTATIONS)
    content = honest_content(rng)
    picked = [names[int(rng.integers(len(names)))] for _ in range(1 + int(rng.random() < 0.2))]
    applied = []
    for name in picked:
        try:
            content = MUTATIONS[name](content, rng)
        except (KeyError, TypeError, AttributeError, AssertionError, ValueError,
                RecursionError):
            continue  # the first mutation removed what the second edits: it stands alone
        applied.append(name)
    return "+".join(applied), content


def with_id(msg: Message) -> Message:
    """Give an instruction message the id a grid would (so replies can refer to it)."""
    msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    return msg


def reply_to(instruction: Message, content: Content | None, *, error: bool = False,
             wire: bool = True) -> Message:
    """A reply to ``instruction`` carrying ``content`` (or an error), as the server gets it:
    through Flower's deflate/inflate (``wire``) where the objects survive it, else as
    is (an in-process peer)."""
    if error or content is None:
        return Message(Error(code=3, reason="client failed"), reply_to=instruction)
    record = RecordDict()
    for name, value in content.items():
        record.__dict__["_data"][name] = value  # any object, as an in-process peer could
    msg = Message(record, reply_to=instruction)
    if not wire:
        return msg
    try:
        return transport(msg)
    except Exception:
        return msg
