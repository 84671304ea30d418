"""Partitioning over clients: reproducible, disjoint, covering, skewed when asked."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefed.data import (
    PARTITIONERS,
    PartitionSpec,
    histograms_to_json,
    label_array,
    label_histograms,
    load_dataset,
    partition_indices,
    partition_labels,
)
from securefed.exceptions import ConfigError, UnknownNameError


@pytest.fixture(scope="module")
def train() -> datasets.Dataset:
    return load_dataset("mnist-5k").train


def _mean_tv(hist: np.ndarray) -> float:
    """Mean total-variation distance between client label mixes and the global mix."""
    glob = hist.sum(0) / hist.sum()
    local = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    return float(0.5 * np.abs(local - glob).sum(1).mean())


def _check_disjoint(parts: list[np.ndarray], n: int, *, cover: bool) -> None:
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat), "an index is used twice"
    assert flat.min() >= 0
    assert flat.max() < n
    if cover:
        assert len(flat) == n


def test_registry_names() -> None:
    assert PARTITIONERS.names() == ["iid", "dirichlet", "shards"]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_reproducible_and_disjoint(train: datasets.Dataset, scheme: str) -> None:
    spec = PartitionSpec(scheme=scheme, num_partitions=8, alpha=0.3, seed=4)
    a = partition_indices(train, spec)
    b = partition_labels(
        label_array(train), PartitionSpec(scheme=scheme, num_partitions=8, alpha=0.3, seed=4)
    )
    assert len(a) == 8
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == np.int64
        assert not x.flags.writeable
    _check_disjoint(a, len(train), cover=scheme != "shards")
    other = partition_indices(
        train, PartitionSpec(scheme=scheme, num_partitions=8, alpha=0.3, seed=5)
    )
    assert any(not np.array_equal(x, y) for x, y in zip(a, other, strict=True))


def test_dirichlet_small_alpha_is_more_skewed_than_iid(train: datasets.Dataset) -> None:
    y = label_array(train)
    tv = {}
    for scheme, alpha in (("iid", 1.0), ("dirichlet", 0.1), ("dirichlet", 100.0)):
        parts = partition_indices(train, PartitionSpec(scheme=scheme, alpha=alpha, seed=0))
        tv[(scheme, alpha)] = _mean_tv(label_histograms(y, parts, 10))
    assert tv[("iid", 1.0)] < 0.1
    assert tv[("dirichlet", 0.1)] > 0.5
    assert tv[("dirichlet", 0.1)] > 3 * tv[("dirichlet", 100.0)]


def test_shards_give_few_labels_per_client(train: datasets.Dataset) -> None:
    y = label_array(train)
    parts = partition_indices(
        train, PartitionSpec(scheme="shards", num_partitions=10, shards_per_partition=2)
    )
    hist = label_histograms(y, parts, 10)
    assert ((hist > 0).sum(1) <= 4).all()  # a shard may straddle two labels


def test_label_histograms_and_json() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    hist = label_histograms(labels, [np.array([0, 2]), np.array([1, 3, 4, 5])], 3)
    np.testing.assert_array_equal(hist, [[1, 1, 0], [1, 0, 3]])
    spec = PartitionSpec(scheme="iid", num_partitions=2)
    doc = json.loads(histograms_to_json(hist, spec=spec, label_names=["a", "b", "c"]))
    assert doc["histograms"] == hist.tolist()
    assert doc["sizes"] == [2, 4]
    assert doc["spec"]["scheme"] == "iid"
    assert doc["label_names"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"num_partitions": 0}, "num_partitions"),
        ({"shards_per_partition": 0}, "shards_per_partition"),
        ({"min_partition_size": -1}, "min_partition_size"),
    ],
)
def test_spec_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PartitionSpec(**kwargs)


def test_unknown_scheme_lists_valid() -> None:
    with pytest.raises(UnknownNameError, match="dirichlet, iid, shards"):
        PartitionSpec(scheme="pathological")


def test_impossible_partition_is_config_error() -> None:
    with pytest.raises(ConfigError, match="num_partitions"):
        partition_labels(np.arange(3) % 2, PartitionSpec(scheme="iid", num_partitions=5))
    with pytest.raises(ConfigError, match="cannot partition"):
        partition_labels(
            np.zeros(20, dtype=int),
            PartitionSpec(num_partitions=10, alpha=0.01, min_partition_size=5),
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 300),
    num_classes=st.integers(1, 6),
    clients=st.integers(1, 12),
    scheme=st.sampled_from(["iid", "dirichlet"]),
    seed=st.integers(0, 1000),
)
def test_property_disjoint_and_cover(
    n: int, num_classes: int, clients: int, scheme: str, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, size=n)
    spec = PartitionSpec(
        scheme=scheme, num_partitions=clients, alpha=1.0, min_partition_size=0, seed=seed
    )
    if clients > n:
        with pytest.raises(ConfigError):
            partition_labels(labels, spec)
        return
    parts = partition_labels(labels, spec)
    assert len(parts) == clients
    _check_disjoint(parts, n, cover=True)
    again = partition_labels(labels.copy(), spec)
    for x, y in zip(parts, again, strict=True):
        np.testing.assert_array_equal(x, y)
