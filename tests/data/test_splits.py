"""Stratified split and subsample: disjoint, covering, deterministic, proportional."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.data import stratified_split, stratified_subsample
from securefed.exceptions import ConfigError


def test_split_is_disjoint_covering_and_stratified() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    train, test = stratified_split(labels, test_fraction=0.2, seed=3)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(200))
    assert len(test) == 40
    np.testing.assert_array_equal(np.bincount(labels[test]), [20, 10, 6, 4])


def test_split_is_deterministic_by_seed() -> None:
    labels = np.random.default_rng(0).integers(0, 5, size=300)
    a = stratified_split(labels, test_fraction=0.25, seed=1)
    b = stratified_split(labels, test_fraction=0.25, seed=1)
    c = stratified_split(labels, test_fraction=0.25, seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_split_handles_singleton_classes() -> None:
    labels = np.array([0, 1, 2, 3, 3, 3, 4, 4, 5, 6])
    train, test = stratified_split(labels, test_fraction=0.2, seed=0)
    assert len(test) == 2
    assert len(train) == 8


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        stratified_split(np.zeros(10), test_fraction=fraction, seed=0)


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    size=st.integers(0, 400),
    seed=st.integers(0, 2**16),
)
def test_subsample_size_and_proportions(counts: list[int], size: int, seed: int) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    idx = stratified_subsample(labels, size, seed=seed)
    assert len(idx) == min(size, len(labels))
    assert len(np.unique(idx)) == len(idx)
    if size < len(labels):
        got = np.bincount(labels[idx], minlength=len(counts))
        expected = np.asarray(counts) * size / len(labels)
        assert np.all(np.abs(got - expected) < 1.0 + 1e-9)
