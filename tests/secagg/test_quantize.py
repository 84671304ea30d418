"""Quantisation into Z_{2^b}: config validation, error bound, unbiasedness, overflow."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.exceptions import ConfigError, PayloadError, PrivacyError
from securefed.secagg import (
    ClipReport,
    QuantizationConfig,
    dequantize_sum,
    min_bits_for,
    quantize,
    sum_error_bound,
    sum_mod,
)
from securefed.secagg.quantize import MAX_Q_MAX

# ---------------------------------------------------------------- config


def test_default_grid_is_finest_that_cannot_overflow():
    cfg = QuantizationConfig(clipping_range=1.0, bits=16, num_clients=10)
    assert cfg.grid_max == (2**16 - 1) // 10
    assert cfg.num_clients * cfg.grid_max < cfg.modulus
    assert cfg.step == pytest.approx(2.0 / cfg.grid_max)
    assert QuantizationConfig(1.0, 62, 1).grid_max == MAX_Q_MAX


def test_numpy_scalars_accepted():
    cfg = QuantizationConfig(np.float32(0.5), np.int64(16), np.int32(4))
    assert (cfg.clipping_range, cfg.bits, cfg.num_clients) == (0.5, 16, 4)
    assert type(cfg.bits) is int


def test_config_is_frozen():
    cfg = QuantizationConfig(1.0, 16, 3)
    with pytest.raises(FrozenInstanceError):
        cfg.bits = 8  # type: ignore[misc]


def test_overflow_config_rejected_with_numbers_and_min_bits():
    with pytest.raises(ConfigError) as exc:
        QuantizationConfig(clipping_range=1.0, bits=16, num_clients=10, q_max=2**13)
    msg = str(exc.value)
    assert "10 * 8192 = 81920" in msg
    assert "2**16 = 65536" in msg
    assert "need bits >= 17" in msg
    QuantizationConfig(clipping_range=1.0, bits=17, num_clients=10, q_max=2**13)


@given(n=st.integers(1, 10_000), q_max=st.integers(1, 2**40), w=st.integers(0, 2**20))
@settings(max_examples=50, deadline=None)
def test_min_bits_is_tight(n, q_max, w):
    bits = min_bits_for(n, q_max, w)
    if bits <= 62:
        QuantizationConfig(1.0, bits, n, q_max=q_max, max_weight=w)
    if bits > 1:
        with pytest.raises(ConfigError, match="overflow"):
            QuantizationConfig(1.0, bits - 1, n, q_max=q_max, max_weight=w)


def test_weight_field_overflow_rejected():
    with pytest.raises(ConfigError, match="max_weight"):
        QuantizationConfig(1.0, 16, 10, q_max=100, max_weight=10_000)
    QuantizationConfig(1.0, 16, 10, q_max=100, max_weight=6_000)


def test_no_grid_left():
    with pytest.raises(ConfigError, match="need bits >= 4"):
        QuantizationConfig(1.0, 3, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clipping_range": 0.0}, "clipping_range"),
        ({"clipping_range": -1.0}, "clipping_range"),
        ({"clipping_range": float("nan")}, "clipping_range"),
        ({"clipping_range": float("inf")}, "clipping_range"),
        ({"clipping_range": "1"}, "clipping_range"),
        ({"bits": 0}, "bits"),
        ({"bits": 63}, "bits"),
        ({"bits": 16.0}, "bits"),
        ({"bits": True}, "bits"),
        ({"num_clients": 0}, "num_clients"),
        ({"on_overflow": "saturate"}, "on_overflow"),
        ({"q_max": 0}, "q_max"),
        ({"q_max": 2**53 + 1, "bits": 62}, "q_max"),
        ({"q_max": 1.5}, "q_max"),
        ({"max_weight": -1}, "max_weight"),
    ],
)
def test_bad_config_values(kwargs, match):
    args = {"clipping_range": 1.0, "bits": 16, "num_clients": 4, **kwargs}
    with pytest.raises(ConfigError, match=match):
        QuantizationConfig(**args)


# ---------------------------------------------------------------- bound


@st.composite
def _sum_case(draw):
    n = draw(st.integers(1, 8))
    q_max = draw(st.one_of(st.integers(1, 64), st.integers(1, 2**30), st.just(None)))
    min_bits = min_bits_for(n, q_max if q_max is not None else 1)
    bits = draw(st.integers(min_bits, 62))
    c = draw(st.floats(1e-3, 1e3))
    d = draw(st.integers(1, 16))
    xs = draw(
        st.lists(
            st.lists(st.floats(-c, c, allow_nan=False), min_size=d, max_size=d),
            min_size=n,
            max_size=n,
        )
    )
    seed = draw(st.integers(0, 2**32))
    return QuantizationConfig(c, bits, n, q_max=q_max), np.array(xs), seed


@given(_sum_case())
@settings(max_examples=60, deadline=None)
def test_sum_dequantises_within_proven_bound(case):
    cfg, xs, seed = case
    rng = np.random.default_rng(seed)
    qs = []
    for x in xs:
        q, report = quantize(x, cfg, rng)
        assert q.dtype == np.uint64
        assert q.shape == x.shape
        assert int(q.max()) <= cfg.grid_max
        assert report == ClipReport(x.size, 0, float(np.abs(x).max()))
        qs.append(q)
    n = len(xs)
    total = sum_mod(qs, cfg.bits)
    err = np.abs(dequantize_sum(total, n, cfg) - xs.sum(axis=0))
    assert float(err.max()) <= sum_error_bound(n, cfg)


def test_bound_is_n_times_step():
    cfg = QuantizationConfig(2.0, 20, 8, q_max=1000)
    assert sum_error_bound(5, cfg) == pytest.approx(5 * 4.0 / 1000, rel=1e-12)


def test_grid_end_points_are_exact():
    cfg = QuantizationConfig(1.0, 16, 2, q_max=100)
    q, _ = quantize(np.array([-1.0, 1.0, 0.0]), cfg, np.random.default_rng(0))
    assert q.tolist() == [0, 100, 50]
    assert dequantize_sum(q, 1, cfg).tolist() == pytest.approx([-1.0, 1.0, 0.0])


# ---------------------------------------------------------------- unbiasedness


@given(
    x=st.floats(-1.0, 1.0, allow_nan=False),
    q_max=st.integers(1, 50),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=30, deadline=None)
def test_stochastic_rounding_is_unbiased(x, q_max, seed):
    cfg = QuantizationConfig(1.0, 16, 2, q_max=q_max)
    draws = 20_000
    q, _ = quantize(np.full(draws, x), cfg, np.random.default_rng(seed))
    y = (x + 1.0) / cfg.step
    assert set(np.unique(q).tolist()) <= {int(np.floor(y)), int(np.ceil(y))}
    # Each draw has variance <= 1/4, so the mean has sd <= 0.5 / sqrt(draws).
    assert abs(q.astype(np.float64).mean() - y) <= 6 * 0.5 / np.sqrt(draws)


def test_rounding_depends_on_rng_and_is_reproducible():
    cfg = QuantizationConfig(1.0, 16, 2, q_max=10)
    x = np.linspace(-0.95, 0.95, 200)
    a, _ = quantize(x, cfg, np.random.default_rng(1))
    b, _ = quantize(x, cfg, np.random.default_rng(1))
    c, _ = quantize(x, cfg, np.random.default_rng(2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------- out of range


def test_out_of_range_is_a_privacy_error_by_default():
    cfg = QuantizationConfig(1.0, 16, 2)
    with pytest.raises(PrivacyError, match=r"2 of 4 values .*max \|x\| = 3\.5"):
        quantize(np.array([0.5, -3.5, 1.5, 1.0]), cfg, np.random.default_rng(0))


def test_clip_mode_clips_and_counts():
    cfg = QuantizationConfig(1.0, 16, 2, on_overflow="clip", q_max=100)
    q, report = quantize(np.array([[0.5, -3.5], [1.5, 1.0]]), cfg, np.random.default_rng(0))
    assert report == ClipReport(num_values=4, num_clipped=2, max_abs=3.5)
    assert report.clipped
    assert q[0, 1] == 0
    assert q[1, 0] == 100
    _, clean = quantize(np.zeros(3), cfg, np.random.default_rng(0))
    assert not clean.clipped


@pytest.mark.parametrize("mode", ["error", "clip"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_rejected_in_both_modes(mode, bad):
    cfg = QuantizationConfig(1.0, 16, 2, on_overflow=mode)
    with pytest.raises(PayloadError, match="1 of 2"):
        quantize(np.array([0.0, bad]), cfg, np.random.default_rng(0))


def test_empty_input():
    cfg = QuantizationConfig(1.0, 16, 2)
    q, report = quantize(np.zeros((0, 3)), cfg, np.random.default_rng(0))
    assert q.shape == (0, 3)
    assert report == ClipReport(0, 0, 0.0)


def test_rng_must_be_a_generator():
    cfg = QuantizationConfig(1.0, 16, 2)
    with pytest.raises(TypeError, match="Generator"):
        quantize(np.zeros(3), cfg, 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- dequantize_sum


def test_dequantize_sum_validates():
    cfg = QuantizationConfig(1.0, 16, 4, q_max=100)
    with pytest.raises(ConfigError, match="n must be"):
        dequantize_sum(np.zeros(2, np.uint64), 5, cfg)
    with pytest.raises(ConfigError, match="n must be"):
        dequantize_sum(np.zeros(2, np.uint64), 0, cfg)
    with pytest.raises(PayloadError, match="cannot come"):
        dequantize_sum(np.array([201], np.uint64), 2, cfg)
    with pytest.raises(PayloadError, match="integer"):
        dequantize_sum(np.array([1.0]), 2, cfg)
    with pytest.raises(ConfigError):
        sum_error_bound(0, cfg)
