"""Plain-value encodings: configs, messages and resumable client state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.secagg import (
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    ProtocolError,
    SecAggClient,
    SecAggServer,
    make_config,
    quantize,
    sum_mod,
)
from securefed.secagg.serial import (
    MESSAGE_CODECS,
    config_from_dict,
    config_to_dict,
    decode_message,
    encode_message,
    pack_vector,
    unpack_vector,
)


@given(bits=st.integers(1, 62), data=st.data())
@settings(max_examples=60, deadline=None)
def test_pack_vector_round_trips_and_uses_ceil_bits_over_8_bytes(bits, data) -> None:
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=20))
    vec = np.array(values, dtype=np.uint64)
    packed = pack_vector(vec, bits)
    assert len(packed) == len(values) * -(-bits // 8)
    np.testing.assert_array_equal(unpack_vector(packed, bits), vec)


def test_config_round_trip_and_tampering() -> None:
    cfg = make_config(7, 100, 2.5, 32, max_weight=1000, on_overflow="clip", round_id=3)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    bad = {**config_to_dict(cfg), "q-max": 5}
    with pytest.raises(ProtocolError, match="q-max"):
        config_from_dict(bad)
    with pytest.raises(ProtocolError, match="invalid SecAgg"):
        config_from_dict({**config_to_dict(cfg), "bits": 2})  # overflow for 7 clients
    with pytest.raises(ProtocolError, match="missing"):
        config_from_dict({k: v for k, v in config_to_dict(cfg).items() if k != "bits"})


def _serialised_round(n: int = 5, length: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A round where every message and every client's state goes through plain values
    between stages, as the Flower mod does; returns (aggregate total, plaintext sum)."""
    cfg = make_config(n, length, 1.0, 32, max_weight=50)
    ids = list(range(1, n + 1))
    rng = np.random.default_rng(0)
    xs = {i: rng.uniform(-1, 1, length) for i in ids}
    server = SecAggServer(cfg, ids)
    states: dict[int, dict[str, object]] = {}

    def client(i: int) -> SecAggClient:
        return SecAggClient.from_state_dict(states[i], cfg, np.random.default_rng(i))

    def through(message: object, kind: str) -> object:
        return decode_message(encode_message(message), kind)

    for i in ids:
        c = SecAggClient(i, cfg, np.random.default_rng(i))
        server.receive(through(c.advertise_keys(), "advertise-keys"))
        states[i] = c.state_dict()
    for i, msg in server.broadcast_keys().items():
        c = client(i)
        server.receive(through(c.share_keys(through(msg, "keys-broadcast")), "share-keys"))
        states[i] = c.state_dict()
    for i, msg in server.route_shares().items():
        c = client(i)
        out = c.masked_input(through(msg, "share-bundle"), xs[i], weight=i)
        server.receive(through(out, "masked-input"))
        states[i] = c.state_dict()
    for i, msg in server.request_unmask().items():
        c = client(i)
        server.receive(through(c.unmask(through(msg, "unmask-request")), "unmask-response"))
    result = server.finish()
    assert result.weight_sum == sum(ids)
    quant = [quantize(xs[i], cfg.quantization, np.random.default_rng(i))[0] for i in ids]
    return result.total[:-1], sum_mod(quant, cfg.bits)


def test_a_round_with_every_message_and_state_serialised_is_exact() -> None:
    total, expected = _serialised_round()
    np.testing.assert_array_equal(total, expected)


def test_every_kind_has_a_codec_and_decoding_checks_the_kind() -> None:
    assert set(MESSAGE_CODECS) == {"advertise-keys", "keys-broadcast", "share-keys",
                                   "share-bundle", "masked-input", "consistency-request",
                                   "consistency-signature", "unmask-request",
                                   "unmask-response"}
    with pytest.raises(ProtocolError, match="expected a 'share-keys'"):
        decode_message({"kind": "advertise-keys"}, "share-keys")
    with pytest.raises(ProtocolError, match="unknown message kind"):
        decode_message({"kind": "x"}, "x")
    with pytest.raises(ProtocolError, match="not a SecAgg"):
        encode_message(object())


@pytest.mark.parametrize(("kind", "fields", "match"), [
    ("advertise-keys", {"sender": 0, "c-public": b"", "s-public": b""}, "client id"),
    ("advertise-keys", {"sender": True, "c-public": b"", "s-public": b""}, "bool"),
    ("keys-broadcast", {"receiver": 1, "ids": [2, 2], "c-public": [], "s-public": []},
     "repeats"),
    ("keys-broadcast", {"receiver": 1, "ids": [2], "c-public": [], "s-public": []},
     "entries"),
    ("share-keys", {"sender": 1, "to": [2], "ciphertexts": ["x"]}, "not bytes"),
    ("masked-input", {"sender": 1, "bits": 70, "vector": b""}, "outside"),
    ("masked-input", {"sender": 1, "bits": 32, "vector": b"abc"}, "whole number"),
    ("unmask-request", {"receiver": 1, "survivors": ["2"], "dropped": []}, "client id"),
    ("unmask-response", {"sender": 1, "b-ids": [2], "b-shares": [b"x"], "s-ids": [],
                         "s-shares": []}, "66 bytes"),
])
def test_malformed_fields_are_protocol_errors(kind, fields, match) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_message({"kind": kind, **fields}, kind)


@pytest.mark.parametrize("stage", [SHARE_KEYS, MASKED_INPUT, UNMASK])
def test_client_state_round_trip_keeps_the_stage_and_rejects_junk(stage) -> None:
    cfg = make_config(3, 4, 1.0, 16)
    c = SecAggClient(1, cfg, np.random.default_rng(0))
    c.advertise_keys()
    c._stage = stage  # only the stage matters for this check
    again = SecAggClient.from_state_dict(c.state_dict(), cfg, np.random.default_rng(0))
    assert again.stage == stage and again.state_dict() == c.state_dict()
    state = c.state_dict()
    for key, junk in (("stage", "flying"), ("c-private", "x"), ("b-seed", b"short"),
                      ("neighbour-ids", None)):
        with pytest.raises(ProtocolError):
            SecAggClient.from_state_dict({**state, key: junk}, cfg,
                                         np.random.default_rng(0))
    with pytest.raises(ProtocolError, match="lacks its keys"):
        SecAggClient.from_state_dict({**state, "c-private": b""}, cfg,
                                     np.random.default_rng(0))
