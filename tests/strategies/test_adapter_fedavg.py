"""AdapterFedAvg through Flower's own Strategy.start loop, with numpy-only clients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from securefed.app.grid import InProcessGrid
from securefed.app.identify import register_identify
from securefed.exceptions import AggregationError
from strategies.adapter_fedavg import AdapterFedAvg, TrainRoundStats
from strategies.records import payload_to_record, read_payload, record_to_payload, write_payload

INIT = {"lora_A": np.zeros((2, 3), np.float32), "head.bias": np.zeros(4, np.float32)}

Corrupt = Callable[[int, dict[str, np.ndarray]], dict[str, np.ndarray]]


def make_app(corrupt: Corrupt | None = None, weight: Callable[[int], object] | None = None):
    """Client i adds (i + 1) to every tensor; ``corrupt`` may break its reply."""
    app = register_identify(ClientApp())

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        payload = read_payload(msg.content)
        new = {k: v + np.float32(pid + 1) for k, v in payload.items()}
        if corrupt is not None:
            new = corrupt(pid, new)
        w = weight(pid) if weight else 10
        content = RecordDict({**write_payload(new),
                              "metrics": MetricRecord({"num-examples": w,
                                                       "train-loss": float(pid)})})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord(
            {"num-examples": 5, "eval-accuracy": 0.1 * pid})}), reply_to=msg)

    return app


class Collect:
    def __init__(self) -> None:
        self.train: list[TrainRoundStats] = []
        self.evals: list[tuple[int, dict, dict]] = []
        self.replies: list[tuple] = []

    def on_train_round(self, stats: TrainRoundStats) -> None:
        self.train.append(stats)

    def on_evaluate_round(self, server_round, metrics, rejected) -> None:
        self.evals.append((server_round, dict(metrics), dict(rejected)))

    def on_reply(self, server_round, position, node, payload, weight, global_payload) -> None:
        self.replies.append((server_round, position, node, dict(payload), weight,
                             dict(global_payload)))


def run(app: ClientApp, *, n: int = 4, k: int = 4, min_replies: int = 4, rounds: int = 1,
        evaluate_clients: int = 0):
    obs = Collect()
    strategy = AdapterFedAvg(clients_per_round=k, min_replies=min_replies,
                             evaluate_clients=evaluate_clients,
                             rng=np.random.default_rng(0), observer=obs)
    grid = InProcessGrid(app, n, {})
    result = strategy.start(grid=grid, initial_arrays=payload_to_record(INIT),
                            num_rounds=rounds)
    return result, obs, grid


def test_weighted_mean_by_key_through_flower_loop() -> None:
    weights = {0: 1, 1: 2, 2: 3, 3: 4}
    result, obs, _ = run(make_app(weight=lambda pid: weights[pid]))
    final = record_to_payload(result.arrays)
    expected = sum(w * (pid + 1) for pid, w in weights.items()) / sum(weights.values())
    for key, value in final.items():
        assert value.shape == INIT[key].shape
        np.testing.assert_allclose(value, expected, rtol=1e-6)
    stats = obs.train[0]
    assert sorted(stats.accepted) == sorted(stats.sampled)
    assert stats.rejected == {}
    assert stats.bytes_down_per_client > 0
    assert all(b > 0 for b in stats.bytes_up.values())


@pytest.mark.parametrize(
    ("name", "corrupt", "reason"),
    [
        ("nan", lambda p: {**p, "lora_A": np.full((2, 3), np.nan, np.float32)}, "non-finite"),
        ("inf", lambda p: {**p, "head.bias": np.full(4, np.inf, np.float32)}, "non-finite"),
        ("shape", lambda p: {**p, "lora_A": np.zeros((3, 2), np.float32)}, "shape"),
        ("missing", lambda p: {"lora_A": p["lora_A"]}, "missing keys"),
        ("extra", lambda p: {**p, "evil": np.zeros(1, np.float32)}, "unexpected keys"),
        ("dtype", lambda p: {**p, "lora_A": p["lora_A"].astype(np.float64)}, "dtype"),
    ],
)
def test_malformed_reply_is_rejected_counted_and_never_aggregated(name, corrupt, reason):
    bad_pid = 2
    app = make_app(corrupt=lambda pid, p: corrupt(p) if pid == bad_pid else p)
    result, obs, grid = run(app, min_replies=3)
    stats = obs.train[0]
    bad_node = grid._node_ids[bad_pid]
    assert list(stats.rejected) == [bad_node]
    assert reason in stats.rejected[bad_node]
    assert result.train_metrics_clientapp[1]["rejected-replies"] == 1
    final = record_to_payload(result.arrays)
    # mean of clients 0, 1, 3 (values 1, 2, 4), equal weights: the bad reply left no trace
    for value in final.values():
        np.testing.assert_allclose(value, (1 + 2 + 4) / 3, rtol=1e-6)


def test_too_few_valid_replies_is_a_typed_error_naming_the_reasons() -> None:
    app = make_app(corrupt=lambda pid, p: {**p, "lora_A": p["lora_A"] * np.nan}
                   if pid < 2 else p)
    with pytest.raises(AggregationError, match=r"2 valid replies of 4 sampled, 3 required.*"
                                                 r"non-finite"):
        run(app, min_replies=3)


def test_crashing_client_counts_as_rejected() -> None:
    def corrupt(pid, p):
        if pid == 0:
            raise RuntimeError("out of memory")
        return p

    _, obs, grid = run(make_app(corrupt=corrupt), min_replies=3)
    assert "out of memory" in obs.train[0].rejected[grid._node_ids[0]]


def test_dropped_node_is_reported_as_missing_reply() -> None:
    obs = Collect()
    strategy = AdapterFedAvg(clients_per_round=3, min_replies=2,
                             rng=np.random.default_rng(1), observer=obs)
    dropped: list[int] = []

    def drop(msg: Message) -> bool:
        if not dropped and msg.metadata.message_type == "train":
            dropped.append(msg.metadata.dst_node_id)
            return True
        return False

    grid = InProcessGrid(make_app(), 3, {}, drop=drop)
    strategy.start(grid=grid, initial_arrays=payload_to_record(INIT), num_rounds=1)
    assert obs.train[0].rejected == {dropped[0]: "no reply before the round timeout"}


def test_samples_exactly_k_and_is_reproducible_by_seed() -> None:
    picks, nodes = [], []
    for _ in range(2):  # two grids: the node ids differ, the sampled partitions do not
        _, obs, _ = run(make_app(), n=10, k=3, min_replies=3, rounds=3)
        picks.append([[s.partitions[n] for n in s.sampled] for s in obs.train])
        nodes.append([s.sampled for s in obs.train])
    assert picks[0] == picks[1] and nodes[0] != nodes[1]
    assert all(len(s) == 3 and len(set(s)) == 3 for s in picks[0])


def test_federated_evaluation_is_example_weighted() -> None:
    _, obs, _ = run(make_app(), n=4, k=4, evaluate_clients=4)
    rnd, metrics, rejected = obs.evals[0]
    assert rnd == 1
    assert rejected == {}
    assert metrics["eval-accuracy"] == pytest.approx(0.1 * (0 + 1 + 2 + 3) / 4)


def test_constructor_rejects_impossible_settings() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="min_replies"):
        AdapterFedAvg(clients_per_round=2, min_replies=3, rng=rng)
    with pytest.raises(ValueError, match="clients_per_round"):
        AdapterFedAvg(clients_per_round=0, min_replies=0, rng=rng)


def test_reply_without_weight_is_rejected() -> None:
    app = register_identify(ClientApp())

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        payload = read_payload(msg.content)
        return Message(RecordDict({**write_payload(payload),
                                   "metrics": MetricRecord({"x": 1.0})}), reply_to=msg)

    with pytest.raises(AggregationError, match="num-examples"):
        run(app, n=2, k=2, min_replies=1)


def test_observer_sees_each_valid_reply_exactly_as_received() -> None:
    bad = 1
    app = make_app(corrupt=lambda pid, p: {**p, "lora_A": p["lora_A"] * np.nan}
                   if pid == bad else p)
    _, obs, grid = run(app, n=3, k=3, min_replies=2, rounds=2)
    assert len(obs.replies) == 4  # 2 valid replies in each of 2 rounds
    for rnd, position, node, payload, weight, sent in obs.replies:
        pid = grid._node_ids.index(node)
        assert pid != bad and weight == 10
        assert obs.train[rnd - 1].sampled[position] == node
        for key, value in payload.items():  # client pid adds pid + 1 to the global
            np.testing.assert_allclose(value, sent[key] + pid + 1)


def test_state_dict_round_trips_through_json_and_resumes_sampling() -> None:
    import json

    def strategy() -> AdapterFedAvg:
        return AdapterFedAvg(clients_per_round=2, min_replies=2, rng=np.random.default_rng(7))

    grid = InProcessGrid(make_app(), 6, {})
    a = strategy()
    a.start(grid=grid, initial_arrays=payload_to_record(INIT), num_rounds=2)
    state = json.loads(json.dumps(a.state_dict()))
    b = strategy()
    b.load_state_dict(state)
    assert b.spec == a.spec
    assert [h.sampled for h in b.history] == [h.sampled for h in a.history]
    assert b._sample(grid, 2) == a._sample(grid, 2)  # same next draw as the original
    with pytest.raises(ValueError, match="malformed"):
        strategy().load_state_dict({"version": 1})
    with pytest.raises(ValueError, match="version"):
        strategy().load_state_dict({**state, "version": 99})
