"""End-to-end SecAgg+ through run_protocol: exactness, dropouts, privacy of the view."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from securefed.exceptions import AggregationError, ConfigError, PayloadError, PrivacyError
from securefed.secagg import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    DropoutError,
    MaskedInput,
    SecAggError,
    make_config,
    quantize,
    run_protocol,
    sum_error_bound,
    sum_mod,
)
from securefed.secagg.messages import BUNDLE_BYTES

SEED = bytes(range(32))


def _inputs(n, rng, shapes=(("w", (3, 4)), ("b", (5,)))):
    return {i: {k: rng.uniform(-1.0, 1.0, s) for k, s in shapes} for i in range(1, n + 1)}


def _flat(payload):
    return np.concatenate(
        [np.asarray(payload[k], dtype=np.float64).ravel() for k in sorted(payload)]
    )


def _expected_total(inputs, survivors, cfg, seed):
    """Quantise exactly as run_protocol does (sorted ids, rng.spawn) and sum mod 2**bits."""
    ids = sorted(inputs)
    children = np.random.default_rng(seed).spawn(len(ids))
    q = {
        i: quantize(_flat(inputs[i]), cfg.quantization, c)[0]
        for i, c in zip(ids, children, strict=True)
    }
    return sum_mod([q[i] for i in survivors], cfg.bits)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(3, 7),
    bits=st.integers(12, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_aggregate_exact_in_ring_and_within_bound(n, bits, seed):
    rng = np.random.default_rng(seed)
    inputs = _inputs(n, rng)
    cfg = make_config(n, 17, 1.0, bits)
    res = run_protocol(inputs, config=cfg, rng=np.random.default_rng(seed), graph_seed=SEED)
    assert res.survivors == tuple(range(1, n + 1))
    assert np.array_equal(res.total, _expected_total(inputs, res.survivors, cfg, seed))
    bound = sum_error_bound(n, cfg.quantization)
    for key in ("w", "b"):
        plain = sum(inputs[i][key] for i in inputs)
        assert res.aggregate[key].shape == plain.shape
        assert np.max(np.abs(res.aggregate[key] - plain)) <= bound


def test_default_sparse_graph_with_dropouts():
    n = 20
    inputs = _inputs(n, np.random.default_rng(0))
    cfg = make_config(n, 17, 1.0, 32)  # k = 10, t = 6
    assert (cfg.degree, cfg.threshold) == (10, 6)
    drops = {SHARE_KEYS: [3], MASKED_INPUT: [7], UNMASK: [11]}
    res = run_protocol(inputs, config=cfg, dropouts=drops, rng=np.random.default_rng(1))
    survivors = [i for i in inputs if i not in (3, 7)]
    assert res.survivors == tuple(survivors)
    assert np.array_equal(res.total, _expected_total(inputs, survivors, cfg, 1))


# Complete graph n = 6, k = 5, t = 3: any client keeps >= t neighbours iff <= k - t = 2 drop.
N, K, T = 6, 5, 3


@pytest.mark.parametrize("stage", [SHARE_KEYS, MASKED_INPUT, UNMASK])
@pytest.mark.parametrize("count", [1, K - T])
def test_dropouts_up_to_tolerance_succeed(stage, count):
    inputs = _inputs(N, np.random.default_rng(2))
    cfg = make_config(N, 17, 1.0, 24, degree=K, threshold=T)
    dropped = list(range(2, 2 + count))
    res = run_protocol(inputs, config=cfg, dropouts={stage: dropped}, rng=np.random.default_rng(3))
    in_sum = [i for i in inputs if stage == UNMASK or i not in dropped]
    assert res.survivors == tuple(in_sum)
    assert np.array_equal(res.total, _expected_total(inputs, in_sum, cfg, 3))
    plain = sum(inputs[i]["w"] for i in in_sum)
    assert np.max(np.abs(res.aggregate["w"] - plain)) <= sum_error_bound(
        len(in_sum), cfg.quantization
    )


@pytest.mark.parametrize("stage", [SHARE_KEYS, MASKED_INPUT, UNMASK])
def test_one_dropout_too_many_raises(stage):
    inputs = _inputs(N, np.random.default_rng(2))
    cfg = make_config(N, 17, 1.0, 24, degree=K, threshold=T)
    with pytest.raises(DropoutError, match="threshold") as info:
        run_protocol(inputs, config=cfg, dropouts={stage: [1, 2, 3]})
    assert isinstance(info.value, AggregationError)
    assert isinstance(info.value, SecAggError)


def test_dropouts_spread_over_stages():
    inputs = _inputs(N, np.random.default_rng(4))
    cfg = make_config(N, 17, 1.0, 24, degree=K, threshold=T)
    ok = run_protocol(inputs, config=cfg, dropouts={SHARE_KEYS: [1], UNMASK: [6]})
    assert ok.survivors == (2, 3, 4, 5, 6)
    with pytest.raises(DropoutError):
        run_protocol(inputs, config=cfg, dropouts={SHARE_KEYS: [1], MASKED_INPUT: [2], UNMASK: [3]})


def test_masked_vectors_look_uniform_and_unrelated_to_input():
    n, length = 4, 4096
    ramp = np.linspace(-1.0, 1.0, length)
    inputs = {i: {"x": ramp * (0.5 + 0.1 * i)} for i in range(1, n + 1)}
    cfg = make_config(n, length, 1.0, 16)
    res = run_protocol(inputs, config=cfg, rng=np.random.default_rng(0))
    masked = [m for m in res.server_view if isinstance(m, MaskedInput)]
    assert len(masked) == n
    for msg in masked:
        assert msg.vector.max() < 2**16
        low = (msg.vector & np.uint64(0xFF)).astype(np.int64)
        _, p_value = stats.chisquare(np.bincount(low, minlength=256))
        assert p_value > 1e-4
        corr = np.corrcoef(msg.vector.astype(np.float64), inputs[msg.sender]["x"])[0, 1]
        assert abs(corr) < 0.1
    # the unmasked quantised ramp itself is far from uniform
    q = quantize(ramp, cfg.quantization, np.random.default_rng(0))[0]
    assert (
        stats.chisquare(np.bincount((q >> np.uint64(8)).astype(np.int64), minlength=256))[1] < 1e-4
    )


def test_weight_field_gives_weighted_sum():
    n = 5
    rng = np.random.default_rng(5)
    raw = {i: rng.uniform(-1.0, 1.0, 6) for i in range(1, n + 1)}
    weights = {i: i for i in raw}
    inputs = {i: {"x": raw[i] * weights[i] / 10} for i in raw}  # pre-scaled into [-1, 1]
    cfg = make_config(n, 6, 1.0, 40, max_weight=10)
    assert cfg.masked_length == 7
    res = run_protocol(inputs, config=cfg, weights=weights, dropouts={UNMASK: [5]})
    assert res.weight_sum == sum(weights.values())
    mean = res.aggregate["x"] * 10 / res.weight_sum
    expected = sum(raw[i] * weights[i] for i in raw) / sum(weights.values())
    assert np.allclose(mean, expected, atol=1e-6)
    with pytest.raises(PayloadError, match="weight"):
        run_protocol(inputs, config=cfg)


def test_bytes_per_client():
    n, length, bits = 5, 17, 20
    inputs = _inputs(n, np.random.default_rng(6))
    cfg = make_config(n, length, 1.0, bits)  # complete graph: k = 4
    res = run_protocol(inputs, config=cfg, dropouts={MASKED_INPUT: [5]})
    sizes = res.bytes_per_client
    assert sizes[ADVERTISE_KEYS] == dict.fromkeys(range(1, 6), 8 + 64)
    assert sizes[SHARE_KEYS] == dict.fromkeys(range(1, 6), 8 + 4 * (8 + BUNDLE_BYTES))
    assert sizes[MASKED_INPUT] == dict.fromkeys(range(1, 5), 8 + length * math.ceil(bits / 8))
    # each of 1..4 reveals 3 self-mask shares and 1 key share (client 5), 66 bytes each
    assert sizes[UNMASK] == dict.fromkeys(range(1, 5), 8 + 4 * (8 + 66))
    assert len(res.server_view) == 5 + 5 + 4 + 4


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({1: {"a": np.zeros(3)}, 2: {"b": np.zeros(3)}, 3: {"a": np.zeros(3)}}, "keys/shapes"),
        ({1: {"a": np.zeros(3)}, 2: {"a": np.zeros(4)}, 3: {"a": np.zeros(3)}}, "keys/shapes"),
        ({1: {"a": np.zeros(2)}, 2: {"a": np.zeros(2)}, 3: {"a": np.zeros(2)}}, "vector_length"),
        ({1: {}, 2: {"a": np.zeros(3)}, 3: {"a": np.zeros(3)}}, "non-empty"),
        ({}, "no client"),
    ],
)
def test_malformed_payloads(inputs, match):
    with pytest.raises(PayloadError, match=match):
        run_protocol(inputs, config=make_config(3, 3, 1.0, 16))


def test_bad_dropouts_and_configs():
    inputs = _inputs(3, np.random.default_rng(7))
    cfg = make_config(3, 17, 1.0, 16)
    for drops, match in (
        ({"advertise_keys": [1]}, "dropout stage"),
        ({UNMASK: [9]}, "not a client"),
        ({SHARE_KEYS: [1], UNMASK: [1]}, "more than one stage"),
    ):
        with pytest.raises(ConfigError, match=match):
            run_protocol(inputs, config=cfg, dropouts=drops)
    with pytest.raises(ConfigError, match="client ids"):
        run_protocol(inputs, config=make_config(4, 17, 1.0, 16))
    with pytest.raises(ConfigError, match=r"overflow|need bits"):
        make_config(1000, 10, 1.0, bits=8)
    with pytest.raises(ConfigError, match="threshold"):
        make_config(6, 10, 1.0, 16, degree=4, threshold=2)


def test_out_of_range_value_is_a_privacy_error_unless_clipping_is_declared():
    inputs = {i: {"x": np.full(4, 0.5)} for i in (1, 2, 3)}
    inputs[2] = {"x": np.array([0.5, 3.0, 0.5, 0.5])}
    with pytest.raises(PrivacyError):
        run_protocol(inputs, config=make_config(3, 4, 1.0, 16))
    res = run_protocol(inputs, config=make_config(3, 4, 1.0, 16, on_overflow="clip"))
    assert res.clip_reports[2].num_clipped == 1
    assert np.allclose(res.aggregate["x"], [1.5, 2.0, 1.5, 1.5], atol=1e-3)
