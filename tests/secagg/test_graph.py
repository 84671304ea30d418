"""The SecAgg+ k-regular neighbour graph and its recovery-failure bound."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.exceptions import ConfigError
from securefed.secagg import (
    GraphConfig,
    build_graph,
    default_degree,
    default_threshold,
    recovery_failure_probability,
)

SEED = bytes(range(32))


@pytest.mark.parametrize(
    ("n", "k"), [(2, 1), (3, 2), (4, 3), (5, 4), (10, 8), (16, 8), (100, 14), (1000, 20)]
)
def test_default_degree(n, k):
    assert default_degree(n) == k
    GraphConfig.for_clients(n)  # always a valid config


def test_default_threshold_is_just_above_half():
    assert [default_threshold(k) for k in (1, 2, 3, 4, 14)] == [1, 2, 2, 3, 8]


@pytest.mark.parametrize(
    ("n", "k", "t", "match"),
    [
        (1, 1, 1, "num_clients"),
        (10, 10, 6, "<= num_clients - 1"),
        (10, 5, 3, "even"),
        (10, 4, 2, "k/2 < t"),
        (10, 4, 5, "k/2 < t"),
        (10, 0, 1, "degree"),
        (10, 4, 0, "threshold"),
        (10, 4.0, 3, "degree"),
    ],
)
def test_config_validation(n, k, t, match):
    with pytest.raises(ConfigError, match=match):
        GraphConfig(num_clients=n, degree=k, threshold=t)


@given(
    n=st.integers(2, 60),
    seed=st.binary(min_size=32, max_size=32),
    data=st.data(),
)
@settings(max_examples=50, deadline=None)
def test_graph_is_k_regular_symmetric_and_deterministic(n, seed, data):
    ids = data.draw(st.lists(st.integers(1, 2**63), min_size=n, max_size=n, unique=True))
    choices = [k for k in range(2, n - 1, 2)] + [n - 1]
    k = data.draw(st.sampled_from(choices))
    g = build_graph(ids, seed, degree=k)
    assert g.client_ids == sorted(ids)
    assert g.config.threshold == default_threshold(k)
    for u in ids:
        assert len(g[u]) == k
        assert u not in g[u]
        assert all(u in g[v] for v in g[u])
    shuffled = data.draw(st.permutations(ids))
    assert build_graph(shuffled, seed, degree=k) == g


def test_different_seeds_give_different_graphs():
    ids = list(range(1, 41))
    graphs = {tuple(sorted(build_graph(ids, bytes([s]) * 32)[1])) for s in range(5)}
    assert len(graphs) > 1


def test_graph_is_connected():
    g = build_graph(list(range(1, 101)), SEED)
    seen, todo = {1}, [1]
    while todo:
        for v in g[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    assert len(seen) == 100


def test_build_graph_rejects_bad_input():
    with pytest.raises(ConfigError, match="distinct"):
        build_graph([1, 1, 2], SEED)
    with pytest.raises(ConfigError, match="seed"):
        build_graph([1, 2, 3], SEED[:16])
    with pytest.raises(ConfigError, match="client ids"):
        build_graph([1, -2, 3], SEED)
    with pytest.raises(ConfigError, match="client ids"):
        build_graph([0, 1, 2], SEED)
    with pytest.raises(ConfigError, match="num_clients"):
        build_graph([1], SEED)
    with pytest.raises(ConfigError, match="not in the graph"):
        build_graph([1, 2, 3], SEED)[4]


def test_failure_probability_golden_values():
    # P[Binom(2, 0.9) < 2] = 1 - 0.81 = 0.19, times n = 3.
    assert recovery_failure_probability(3, 2, 2, 0.1) == pytest.approx(0.57)
    assert recovery_failure_probability(3, 2, 2, 0.5) == 1.0  # capped union bound
    assert recovery_failure_probability(100, 14, 8, 0.0) == 0.0
    assert recovery_failure_probability(100, 14, 8, 1.0) == 1.0
    tail = sum(math.comb(14, j) * 0.9**j * 0.1 ** (14 - j) for j in range(8))
    assert recovery_failure_probability(100, 14, 8, 0.1) == pytest.approx(100 * tail, rel=1e-12)


def test_failure_probability_monotone_in_dropout_rate():
    ps = [recovery_failure_probability(500, 18, 10, p) for p in np.linspace(0, 1, 21)]
    assert all(a <= b for a, b in itertools.pairwise(ps))


def test_failure_probability_bounds_a_simulation():
    n, k, t, p = 40, 8, 5, 0.25
    g = build_graph(list(range(1, n + 1)), SEED, degree=k, threshold=t)
    rng = np.random.default_rng(0)
    trials, failures = 2000, 0
    for _ in range(trials):
        alive = set((np.flatnonzero(rng.random(n) >= p) + 1).tolist())
        failures += any(len(g[u] & alive) < t for u in range(1, n + 1))
    bound = recovery_failure_probability(n, k, t, p)
    assert failures / trials <= bound + 3 * math.sqrt(0.25 / trials)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.1"])
def test_failure_probability_rejects_bad_rate(p):
    with pytest.raises(ConfigError, match="dropout_rate"):
        recovery_failure_probability(10, 4, 3, p)
