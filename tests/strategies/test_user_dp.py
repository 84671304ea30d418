"""User-level DP wrappers (strategies.user_dp) through Flower's Strategy.start loop.

Numpy-only clients on the in-process grid: client ``i`` adds ``shift(i)`` to every
tensor, so every update and its clipped value are known in closed form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from securefed.app.clipping_mod import clipping_mod
from securefed.app.grid import InProcessGrid
from securefed.app.identify import register_identify
from securefed.exceptions import AggregationError, ConfigError, PrivacyBudgetExhausted, PrivacyError
from securefed.privacy.accountants import create_accountant
from securefed.privacy.noise import make_source
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.records import payload_to_record, read_payload, record_to_payload, write_payload
from strategies.user_dp import USER_DP_WRAPPERS, UserDPSettings

D = 5_000
INIT = {"w": np.zeros(D, np.float32), "b": np.zeros(4, np.float32)}
DIM = D + 4


def make_app(shift: Callable[[int], float], *, mods: list | None = None,
             fail: set[int] | None = None) -> ClientApp:
    app = register_identify(ClientApp(mods=mods or []))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if fail and pid in fail:
            return Message(Error(code=1, reason="client crashed"), reply_to=msg)
        new = {k: v + np.float32(shift(pid)) for k, v in read_payload(msg.content).items()}
        return Message(RecordDict({**write_payload(new), "metrics": MetricRecord(
            {"num-examples": 10 * (pid + 1)})}), reply_to=msg)

    return app


class Ledger:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, Any]]] = []

    def on_user_privacy(self, server_round: int, row: Any) -> None:
        self.rows.append((server_round, dict(row)))


def run(app: ClientApp, clipping: str, *, z: float = 1e-3, clip: float = 0.5, n: int = 4,
        k: int = 4, rounds: int = 1, strict: bool = True, budget: float = 1e12,
        sample_rate: float = 1.0, poisson: int = 0, **extra: Any):
    ledger = Ledger()
    adapter = AdapterFedAvg(clients_per_round=k, min_replies=1, uniform_weights=True,
                            poisson_population=poisson, rng=np.random.default_rng(0))
    settings = UserDPSettings(adapter=adapter, accountant=create_accountant("rdp"),
                              sample_rate=sample_rate, delta=1e-5, budget=budget,
                              strict=strict, source=make_source("seeded", 1),
                              observer=ledger)
    strategy = USER_DP_WRAPPERS.get(clipping)(adapter, settings, noise_multiplier=z,
                                              clipping_norm=clip, expected_clients=k, **extra)
    grid = InProcessGrid(app, n, {})
    result = strategy.start(grid=grid, initial_arrays=payload_to_record(INIT),
                            num_rounds=rounds)
    return record_to_payload(result.arrays), strategy, ledger


def flat(payload: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([payload["b"], payload["w"]]).astype(np.float64)


@pytest.mark.parametrize("clipping", ["server-fixed", "client-fixed"])
def test_fixed_clipping_releases_the_mean_of_clipped_updates(clipping: str) -> None:
    mods = [clipping_mod] if clipping == "client-fixed" else []
    final, _, ledger = run(make_app(lambda pid: pid + 1.0, mods=mods), clipping)
    # every update is (pid+1)·1, norm (pid+1)·sqrt(DIM) >> C: each clips to C·1/sqrt(DIM)
    expected = 0.5 / math.sqrt(DIM)
    np.testing.assert_allclose(flat(final), expected, atol=6 * 1e-3 * 0.5 / 4)  # 6 sigma
    (r, row), = ledger.rows
    assert r == 1 and row["clients_in_aggregate"] == 4 and row["denominator"] == 4
    assert row["noise_std"] == pytest.approx(1e-3 * 0.5 / 4)


@pytest.mark.parametrize("clipping", ["server-fixed", "client-fixed"])
def test_noise_has_the_calibrated_standard_deviation(clipping: str) -> None:
    mods = [clipping_mod] if clipping == "client-fixed" else []
    final, _, ledger = run(make_app(lambda pid: 0.0, mods=mods), clipping, z=1.0, clip=2.0)
    values = flat(final)
    assert abs(values.mean()) < 4 * 0.5 / math.sqrt(DIM)
    assert values.std() == pytest.approx(1.0 * 2.0 / 4, rel=0.05)  # z·C/m
    assert ledger.rows[0][1]["noise_std"] == pytest.approx(0.5)


def test_missing_reply_is_a_privacy_error_in_strict_mode() -> None:
    with pytest.raises(PrivacyError, match="3 of 4 sampled clients replied"):
        run(make_app(lambda pid: 1.0, fail={2}), "server-fixed")


def test_fixed_denominator_keeps_dividing_by_the_expected_count() -> None:
    final, _, ledger = run(make_app(lambda pid: 1.0, fail={2}), "server-fixed", strict=False)
    np.testing.assert_allclose(flat(final), 0.75 * 0.5 / math.sqrt(DIM), atol=2e-3)
    assert ledger.rows[0][1]["clients_in_aggregate"] == 3


def test_client_side_clipping_is_verified_in_plaintext() -> None:
    with pytest.raises(PrivacyError, match="does not clip"):
        run(make_app(lambda pid: 1.0), "client-fixed")  # no clipping_mod on the clients


@pytest.mark.parametrize(("clipping", "kwargs"), [
    ("client-adaptive", {"z": 0.1, "clipped_count_stddev": 1.0}), ("client-fixed", {})])
def test_clipping_mod_sends_weight_one_and_the_norm_bit_only_when_adaptive(
        clipping: str, kwargs: dict, monkeypatch) -> None:
    seen: list[dict] = []
    app = make_app(lambda pid: 1e-6 if pid % 2 else 1.0, mods=[clipping_mod])
    adapter_replies = AdapterFedAvg.report_client_metrics

    def spy(self, server_round, node, metrics):
        seen.append(dict(metrics))
        return adapter_replies(self, server_round, node, metrics)

    monkeypatch.setattr(AdapterFedAvg, "report_client_metrics", spy)
    run(app, clipping, **kwargs)
    assert all(m["num-examples"] == 1 for m in seen)
    assert all("train-examples" not in m for m in seen)  # the true count stays home
    if clipping == "client-adaptive":
        assert sorted(m["norm_bit"] for m in seen) == [0, 0, 1, 1]
    else:  # the bit is not needed, so it does not leave the client
        assert not any("norm_bit" in m for m in seen)


@pytest.mark.parametrize("clipping", ["server-adaptive", "client-adaptive"])
def test_adaptive_norm_moves_towards_the_target_quantile(clipping: str) -> None:
    mods = [clipping_mod] if clipping == "client-adaptive" else []
    # every update is clipped: C must grow (Andrew et al. 2021); all tiny: C must shrink
    _, big, _ = run(make_app(lambda pid: 1.0, mods=mods), clipping, z=0.1, rounds=3,
                    clipped_count_stddev=1.0)
    _, small, _ = run(make_app(lambda pid: 1e-7, mods=mods), clipping, z=0.1, rounds=3,
                      clipped_count_stddev=1.0)
    assert big.clipping_norm > 0.5 > small.clipping_norm


def test_adaptive_clipping_refuses_an_impossible_noise_split() -> None:
    with pytest.raises(ConfigError, match="clipped_count_stddev"):
        run(make_app(lambda pid: 1.0), "server-adaptive", z=1.0)  # sigma_b = 4/20 = 0.2


def test_user_epsilon_grows_with_rounds_as_the_accountant_composes() -> None:
    _, strategy, ledger = run(make_app(lambda pid: 0.1), "server-fixed", z=1.0, rounds=3,
                              sample_rate=0.4)
    eps = [row["user_epsilon"] for _, row in ledger.rows]
    assert [r for r, _ in ledger.rows] == [1, 2, 3]
    assert eps[0] < eps[1] < eps[2]
    reference = create_accountant("rdp")
    reference.step(noise_multiplier=1.0, sample_rate=0.4, num_steps=3)
    assert eps[2] == pytest.approx(reference.get_epsilon(1e-5))
    assert strategy.epsilon() == pytest.approx(eps[2])


def test_budget_refuses_the_round_that_would_exceed_it() -> None:
    one = create_accountant("rdp")
    one.step(noise_multiplier=1.0, sample_rate=1.0, num_steps=1)
    budget = one.get_epsilon(1e-5) * 1.2
    with pytest.raises(PrivacyBudgetExhausted, match="round 2 would take"):
        run(make_app(lambda pid: 0.1), "server-fixed", z=1.0, rounds=3, budget=budget)


def test_state_round_trip_and_mismatch() -> None:
    _, strategy, _ = run(make_app(lambda pid: 1.0), "server-adaptive", z=0.1, rounds=2,
                         clipped_count_stddev=1.0)
    state = strategy.state_dict()
    _, fresh, _ = run(make_app(lambda pid: 1.0), "server-adaptive", z=0.1, rounds=0,
                      clipped_count_stddev=1.0)
    json.dumps(state)  # serialisable as it is
    fresh.load_state_dict(state)
    assert fresh.epsilon() == pytest.approx(strategy.epsilon())
    assert fresh.clipping_norm == strategy.clipping_norm and fresh.released == 2
    # a resumed seeded run continues the noise stream; it never replays released noise
    np.testing.assert_array_equal(fresh.dp.source.normal(5), strategy.dp.source.normal(5))
    with pytest.raises(ConfigError, match="cannot be loaded"):
        fresh.load_state_dict({**state, "wrapper": "client-fixed"})
    with pytest.raises(PrivacyError):
        fresh.load_state_dict({**state, "accountant": create_accountant("pld").state_dict()})


def test_poisson_sampling_draws_each_client_with_probability_q() -> None:
    adapter = AdapterFedAvg(clients_per_round=9, min_replies=1, poisson_population=30,
                            rng=np.random.default_rng(3))
    grid = InProcessGrid(make_app(lambda pid: 0.0), 30, {})
    sizes = [len(adapter._sample_train(grid, r)) for r in range(400)]
    assert np.mean(sizes) == pytest.approx(9.0, abs=0.3)  # q·N, std of the mean 0.125
    assert min(sizes) < 9 < max(sizes)
    few = AdapterFedAvg(clients_per_round=1, min_replies=1, poisson_population=30,
                        rng=np.random.default_rng(0))

    def sample_until_empty() -> None:
        for r in range(200):  # P(empty) = (29/30)^30 = 0.36 per round
            few._sample_train(grid, r)

    with pytest.raises(AggregationError, match="Poisson sampling"):
        sample_until_empty()


def test_poisson_sampling_uses_the_csprng_when_given_one() -> None:
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    adapter = AdapterFedAvg(clients_per_round=9, min_replies=1, poisson_population=30,
                            rng=rng, sampling_source=make_source("secure"))
    grid = InProcessGrid(make_app(lambda pid: 0.0), 30, {})
    sizes = [len(adapter._sample_train(grid, r)) for r in range(400)]
    assert np.mean(sizes) == pytest.approx(9.0, abs=0.4)
    # the predictable generator only orders the population; it never decides who is in
    population_draws = 400  # one `choice` of 30 out of 30 per round
    check = np.random.default_rng(3)
    for _ in range(population_draws):
        check.choice(30, size=30, replace=False)
    assert rng.bit_generator.state == check.bit_generator.state != before


def test_a_resumed_strategy_continues_the_poisson_sampling_stream() -> None:
    def adapter() -> AdapterFedAvg:
        return AdapterFedAvg(clients_per_round=5, min_replies=1, poisson_population=20,
                             rng=np.random.default_rng(0),
                             sampling_source=make_source("seeded", 5))

    grid = InProcessGrid(make_app(lambda pid: 0.0), 20, {})
    first = adapter()
    for r in range(3):
        first._sample_train(grid, r)
    resumed = adapter()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [resumed._sample_train(grid, r) for r in range(3, 8)] == [
        first._sample_train(grid, r) for r in range(3, 8)]


def test_server_side_clipping_refuses_a_reply_it_cannot_clip() -> None:
    app = register_identify(ClientApp())

    @app.train()
    def train(msg: Message, context: Context) -> Message:  # e.g. a masked SecAgg+ reply
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    with pytest.raises(PrivacyError, match="without a plaintext update"):
        run(app, "server-fixed")


def test_uniform_weights_ignore_example_counts() -> None:
    adapter = AdapterFedAvg(clients_per_round=4, min_replies=4, uniform_weights=True,
                            rng=np.random.default_rng(0))
    grid = InProcessGrid(make_app(lambda pid: float(pid)), 4, {})
    result = adapter.start(grid=grid, initial_arrays=payload_to_record(INIT), num_rounds=1)
    np.testing.assert_allclose(flat(record_to_payload(result.arrays)), 1.5)
