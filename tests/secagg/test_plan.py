"""`securefed.secagg.plan` and the `securefed secagg plan` command."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from securefed.exceptions import ConfigError
from securefed.secagg import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    default_degree,
    make_config,
    recovery_failure_probability,
    run_protocol,
)
from securefed.secagg.cli import secagg_app
from securefed.secagg.plan import PLAN_KEYS, Plan, failure_probability, plan

runner = CliRunner()

EXPECTED_KEYS = (
    "num_clients", "num_params", "dropout_rate", "clipping_range", "degree", "threshold",
    "degree_rule", "bits", "modulus", "q_max", "step", "mean_error_bound", "stage_bytes",
    "bytes_per_client", "bytes_total", "float32_bytes", "upload_overhead",
    "failure_probability", "target_failure", "meets_target",
)


def test_json_keys_are_stable() -> None:
    p = plan(100, 1000, 0.1)
    data = json.loads(p.to_json())
    assert tuple(data) == EXPECTED_KEYS == PLAN_KEYS
    assert tuple(data["stage_bytes"]) == (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASK)
    assert data["bytes_per_client"] == sum(data["stage_bytes"].values())
    assert data["bytes_total"] == 100 * data["bytes_per_client"]
    assert data["modulus"] == 2 ** data["bits"]
    assert isinstance(p, Plan)


@pytest.mark.parametrize(("n", "degree"), [(6, None), (12, 8)])
def test_bytes_match_a_real_round(n: int, degree: int | None) -> None:
    params = 100
    p = plan(n, params, 0.0, degree=degree)
    cfg = make_config(n, params, p.clipping_range, p.bits, degree=p.degree,
                      threshold=p.threshold)
    rng = np.random.default_rng(0)
    inputs = {i: {"w": rng.uniform(-1, 1, params)} for i in range(1, n + 1)}
    result = run_protocol(inputs, config=cfg, rng=rng, graph_seed=bytes(range(32)))
    for stage, expected in p.stage_bytes.items():
        assert set(result.bytes_per_client[stage].values()) == {expected}, stage
    total = sum(sum(v.values()) for v in result.bytes_per_client.values())
    assert total == p.bytes_total


def test_bits_fill_whole_bytes_and_given_bits_validated() -> None:
    p = plan(10, 5, 0.0)
    assert 10 * p.q_max < p.modulus
    # the minimum (20 bits for 10 x (2^16 - 1)), rounded up to the 3 bytes sent anyway
    assert p.bits == 24 and p.q_max >= 2**16 - 1
    assert plan(500, 5, 0.0).bits == 32  # 25 bits would travel in 4 bytes too
    assert plan(10, 5, 0.0, bits=32).bits == 32
    with pytest.raises(ConfigError, match=r"overflow|bits"):
        plan(1000, 5, 0.0, bits=8)


def test_failure_decreases_with_k_and_increases_with_rate() -> None:
    n = 200
    by_k = [plan(n, 10, 0.1, degree=k).failure_probability for k in (16, 24, 32, 64)]
    assert all(a > b for a, b in itertools.pairwise(by_k))
    by_rate = [plan(n, 10, r, degree=32).failure_probability for r in (0.02, 0.05, 0.1, 0.2)]
    assert by_rate[-1] < 1.0  # below the union bound's cap of 1
    assert all(a < b for a, b in itertools.pairwise(by_rate))


def test_degree_raised_to_meet_target() -> None:
    n = 500
    p = plan(n, 10, 0.2)
    assert p.degree > default_degree(n) and p.degree_rule == "raised"
    assert p.meets_target and p.failure_probability <= p.target_failure
    assert p.failure_probability == recovery_failure_probability(n, p.degree, p.threshold, 0.2)
    smaller = recovery_failure_probability(n, p.degree - 2, (p.degree - 2) // 2 + 1, 0.2)
    assert smaller > p.target_failure  # the first k that meets the target
    assert plan(n, 10, 0.0).degree == default_degree(n)
    given = plan(n, 10, 0.2, degree=10)
    assert given.degree_rule == "given" and not given.meets_target


def test_large_degree_does_not_overflow() -> None:
    bound = failure_probability(5000, 2000, 1001, 0.1)
    assert 0.0 <= bound < 1e-12


@pytest.mark.parametrize(
    ("args", "name"),
    [((1, 10, 0.1), "num_clients"), ((10, 0, 0.1), "num_params"),
     ((10, 10, 1.0), "dropout_rate"), ((10, 10, -0.1), "dropout_rate")],
)
def test_invalid_args_name_the_argument(args: tuple[int, int, float], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        plan(*args)


def test_cli_table_and_json() -> None:
    base = ["plan", "--clients", "100", "--params", "75653", "--dropout-rate", "0.1"]
    res = runner.invoke(secagg_app, base)
    assert res.exit_code == 0, res.output
    assert "degree k" in res.stdout and "share_keys" in res.stdout
    res = runner.invoke(secagg_app, [*base, "--json", "--bits", "32", "--degree", "20"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["bits"], data["degree"], data["degree_rule"]) == (32, 20, "given")
    assert data == plan(100, 75653, 0.1, bits=32, degree=20).to_dict()


@pytest.mark.parametrize(
    ("extra", "word"),
    [(["--clients", "1", "--params", "10", "--dropout-rate", "0.1"], "num_clients"),
     (["--clients", "10", "--params", "0", "--dropout-rate", "0.1"], "num_params"),
     (["--clients", "10", "--params", "10", "--dropout-rate", "1"], "dropout_rate"),
     (["--clients", "10", "--params", "10", "--dropout-rate", "0.1", "--degree", "3"],
      "degree"),
     (["--clients", "1000", "--params", "10", "--dropout-rate", "0.1", "--bits", "8"],
      "bits")],
)
def test_cli_bad_args_exit_2(extra: list[str], word: str) -> None:
    res = runner.invoke(secagg_app, ["plan", *extra])
    assert res.exit_code == 2
    assert "error:" in res.stderr and word in res.stderr
    assert res.stdout == ""
