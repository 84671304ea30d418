"""One identity per client: the server samples, sums and reports by partition id.

Flower draws node ids at random in every run, and so does the in-process grid: the
reported problem (the same seed giving 0.944, 0.816 and 0.744 after round 1) came from
sampling sorted *node ids*. These tests run with random ids and check that a seed
fixes the rounds, that hostile identify replies are excluded with a reason or end the
run with a clear error, and that metrics, the privacy ledger and captures name the
partition id beside the node id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from securefed.app import client_app as client_module
from securefed.app.egress import EGRESS, IDENTIFY_KIND, EgressSettings
from securefed.app.egress_mod import enforce, reply_kind
from securefed.app.grid import InProcessGrid
from securefed.app.identify import handle_identify, register_identify
from securefed.app.launcher import run_inprocess
from securefed.app.server_app import run_server
from securefed.config import ExperimentConfig, to_flat
from securefed.exceptions import AggregationError, PrivacyError
from securefed.report.recorder import read_metrics
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.identities import (
    IDENTIFY_MESSAGE_TYPE,
    IDENTITY_RECORD,
    NodeIdentities,
)
from strategies.records import payload_to_record, read_payload, record_to_payload, write_payload
from tests.app.conftest import tiny_config

Claim = Any  # what a hostile node puts in its identify reply (None: an error reply)


def _identify_as(claims: dict[int, Claim]) -> ClientApp:
    """A numpy-only app; partition ``p`` in ``claims`` answers identify with its claim."""
    app = ClientApp()

    @app.query("identify")
    def identify(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid not in claims:
            return handle_identify(msg, context)
        claim = claims[pid]
        if claim is None:
            return Message(Error(code=1, reason="no partition here"), reply_to=msg)
        if isinstance(claim, RecordDict):
            return Message(claim, reply_to=msg)
        return Message(RecordDict({IDENTITY_RECORD: ConfigRecord({"partition-id": claim})}),
                       reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        new = {k: v + np.float32(pid + 1) for k, v in read_payload(msg.content).items()}
        return Message(RecordDict({**write_payload(new),
                                   "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    return app


# ----------------------------------------------------------------- grid and discovery
def test_the_in_process_grid_draws_random_node_ids_like_a_superlink() -> None:
    a, b = (InProcessGrid(ClientApp(), 4, {}) for _ in range(2))
    ids = list(a.get_node_ids())
    assert len(set(ids)) == 4 and ids != list(b.get_node_ids())
    assert all(1 < n < 2**64 for n in ids)
    assert [a.contexts[a.node_of(p)].node_config["partition-id"] for p in range(4)] == [
        0, 1, 2, 3]
    pinned = InProcessGrid(ClientApp(), 2, {}, node_ids=[7, 9])
    assert list(pinned.get_node_ids()) == [7, 9] and pinned.node_of(1) == 9
    with pytest.raises(ValueError, match="distinct"):
        InProcessGrid(ClientApp(), 2, {}, node_ids=[7, 7])


def test_discovery_maps_every_node_to_its_partition() -> None:
    grid = InProcessGrid(register_identify(ClientApp()), 5, {})
    ids = NodeIdentities(num_partitions=5)
    assert ids.wait_for(grid, 5, wait_s=5) == [0, 1, 2, 3, 4]
    assert ids.partitions() == {grid.node_of(p): p for p in range(5)}
    assert ids.excluded() == {}
    revision = ids.revision
    ids.refresh(grid)  # nothing new: no second exchange, nothing changed
    assert ids.revision == revision


@pytest.mark.parametrize(("claim", "reason"), [
    (0, "partition id 0 is claimed by 2 nodes"),             # another node's partition
    (7, "partition-id 7 is out of range; this run has partition ids [0, 4)"),
    (-1, "partition-id -1 is out of range"),
    ("1", "'partition-id' must be an int, got str"),
    (True, "'partition-id' must be an int, got bool"),
    (1.0, "'partition-id' must be an int, got float"),
    (None, "identify: client reported an error: no partition here"),
    (RecordDict({IDENTITY_RECORD: ConfigRecord({"partition-id": 1, "site": "x"})}),
     "unknown keys ['site']"),
    (RecordDict({"metrics": MetricRecord({"partition-id": 1})}),
     "identify reply holds exactly"),
])
def test_a_hostile_identify_reply_excludes_the_node_with_its_reason(claim, reason) -> None:
    grid = InProcessGrid(_identify_as({1: claim}), 4, {})
    ids = NodeIdentities(num_partitions=4)
    ids.refresh(grid)
    excluded = ids.excluded()
    assert grid.node_of(1) in excluded and reason in excluded[grid.node_of(1)]
    duplicate = claim == 0
    assert set(excluded) == ({grid.node_of(0), grid.node_of(1)} if duplicate
                             else {grid.node_of(1)})
    assert ids.usable() == ([2, 3] if duplicate else [0, 2, 3])  # never mixed in
    with pytest.raises(AggregationError, match=r"can be used, 4 are needed; excluded: .*"
                                               + reason.split(" ")[0]):
        ids.wait_for(grid, 4, wait_s=600)  # at once: every connected node has answered


def test_a_silent_node_is_asked_again_only_while_too_few_nodes_can_be_used() -> None:
    asked: list[int] = []

    def silent(msg: Message) -> bool:  # partition 3's node never answers identify
        if msg.metadata.message_type != IDENTIFY_MESSAGE_TYPE:
            return False
        asked.append(msg.metadata.dst_node_id)
        return msg.metadata.dst_node_id == grid.node_of(3)

    grid = InProcessGrid(register_identify(ClientApp()), 4, {}, drop=silent)
    ids = NodeIdentities(num_partitions=4)
    for _ in range(3):  # three rounds' sampling: one exchange, one timeout at most
        assert ids.wait_for(grid, 3, wait_s=5) == [0, 1, 2]
    assert asked.count(grid.node_of(3)) == 1 and len(asked) == 4
    with pytest.raises(AggregationError, match=r"only 3 identified nodes after 1 s "
                                               r"\(4 connected\); 4 are needed"):
        ids.wait_for(grid, 4, wait_s=1)
    assert asked.count(grid.node_of(3)) >= 2  # asked again while it was needed


def test_the_strategy_samples_partitions_and_records_exclusions() -> None:
    seen: list[tuple[dict, dict]] = []

    class Observer:
        def on_train_round(self, stats) -> None:
            self.stats = stats

        def on_evaluate_round(self, *args) -> None: ...

        def on_reply(self, *args) -> None: ...

        def on_identities(self, partitions, excluded) -> None:
            seen.append((dict(partitions), dict(excluded)))

    obs = Observer()
    grid = InProcessGrid(_identify_as({3: 9}), 4, {})
    strategy = AdapterFedAvg(clients_per_round=3, min_replies=3, num_partitions=4,
                             rng=np.random.default_rng(0), observer=obs)
    strategy.start(grid=grid, initial_arrays=payload_to_record({"w": np.zeros(2, np.float32)}),
                   num_rounds=1)
    (partitions, excluded), = seen
    assert sorted(partitions.values()) == [0, 1, 2]
    assert list(excluded) == [grid.node_of(3)] and "out of range" in excluded[grid.node_of(3)]
    assert sorted(obs.stats.partitions.values()) == [0, 1, 2]
    # accepted in partition-id order: the order the replies were summed in
    assert [obs.stats.partitions[n] for n in obs.stats.accepted] == [0, 1, 2]


@pytest.mark.parametrize("poisson", [0, 12])
def test_a_seed_samples_the_same_partitions_on_grids_with_other_node_ids(poisson) -> None:
    """Fixed-size and (seeded) Poisson sampling draw partition ids, not node ids."""
    from securefed.privacy.noise import make_source

    draws = []
    for _ in range(2):
        grid = InProcessGrid(register_identify(ClientApp()), 12, {})
        strategy = AdapterFedAvg(clients_per_round=4, min_replies=1, num_partitions=12,
                                 poisson_population=poisson, rng=np.random.default_rng(3),
                                 sampling_source=make_source("seeded", 5) if poisson
                                 else None)
        rounds = [strategy._sample_train(grid, r) for r in range(1, 6)]
        draws.append([[strategy.identities.partition_of(n) for n in nodes]
                      for nodes in rounds])
    assert draws[0] == draws[1]
    assert len({tuple(d) for d in draws[0]}) > 1  # it does sample
    if poisson:
        assert all(d == sorted(d) for d in draws[0])  # Poisson rounds in partition order


class _Shuffled(InProcessGrid):
    """Replies come back in a random order, as they arrive on Flower's engines."""

    def __init__(self, *args: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order = np.random.default_rng(seed)

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        return [replies[i] for i in self.order.permutation(len(replies))]


def test_replies_are_summed_in_partition_order_so_the_mean_is_bit_identical() -> None:
    """Floating-point sums depend on their order: (1e16 + 1) - 1e16 is 0, not 1."""
    values = [1e16, 1.0, -1e16, 3.0, 0.5]
    app = register_identify(ClientApp())

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({**write_payload({"w": np.array([values[pid]])}),
                                   "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    means = set()
    for seed in range(6):
        strategy = AdapterFedAvg(clients_per_round=5, min_replies=5,
                                 rng=np.random.default_rng(0))
        result = strategy.start(grid=_Shuffled(app, 5, {}, seed=seed), num_rounds=1,
                                initial_arrays=payload_to_record({"w": np.zeros(1)}))
        means.add(record_to_payload(result.arrays)["w"].tobytes())
    assert len(means) == 1


# ------------------------------------------------------------------------ egress
def test_the_identify_reply_is_allow_listed_in_every_mode_and_nothing_else_leaves() -> None:
    settings = EgressSettings(client_stats="off", dp=True)
    for mode in EGRESS.names():
        allow = EGRESS.get(mode)(settings)
        assert set(allow[IDENTIFY_KIND].configs) == {IDENTITY_RECORD}, mode
        assert not allow[IDENTIFY_KIND].arrays and not allow[IDENTIFY_KIND].metrics
    query = _delivered(Message(RecordDict(), dst_node_id=5,
                               message_type=IDENTIFY_MESSAGE_TYPE))
    assert reply_kind(query) == IDENTIFY_KIND
    allow = EGRESS.get("secagg")(settings)
    ok = Message(RecordDict({IDENTITY_RECORD: ConfigRecord({"partition-id": 3,
                                                            "name": "node-3"})}),
                 reply_to=query)
    enforce(IDENTIFY_KIND, ok, allow)
    leak = Message(RecordDict({IDENTITY_RECORD: ConfigRecord({"partition-id": 3,
                                                              "examples": 812})}),
                   reply_to=query)
    with pytest.raises(PrivacyError, match=r"keys \['examples'\] of ConfigRecord 'identity'"):
        enforce(IDENTIFY_KIND, leak, allow)


def _delivered(msg: Message) -> Message:
    from securefed.app.grid import transport

    msg.metadata.__dict__["_message_id"] = "m1"
    msg.metadata.__dict__["_src_node_id"] = 0
    return transport(msg)


# ------------------------------------------------------------- the real apps
def _run(cfg: ExperimentConfig, out: Path, app: ClientApp | None = None) -> dict[str, Any]:
    run_config: dict[str, Any] = {"config-file": "", "run-dir": str(out), **to_flat(cfg)}
    return run_server(InProcessGrid(app or client_module.app, cfg.data.num_clients,
                                    run_config), run_config)


def _lying(claims: dict[int, Claim]) -> ClientApp:
    """The real ClientApp, but partition ``p`` in ``claims`` claims ``claims[p]``
    (a mod outside the egress check: a hostile client runs none)."""
    def liar(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        pid = int(context.node_config["partition-id"])
        if msg.metadata.message_type != IDENTIFY_MESSAGE_TYPE or pid not in claims:
            return reply
        return Message(RecordDict({IDENTITY_RECORD: ConfigRecord(
            {"partition-id": claims[pid]})}), reply_to=msg)

    app = register_identify(ClientApp(mods=[liar, *client_module.MODS]))
    app.train()(client_module.handle_train)
    app.evaluate()(client_module.handle_evaluate)
    return app


def test_one_seed_gives_identical_metrics_whatever_the_node_ids(tiny_backbones,
                                                                tmp_path) -> None:
    """The reported problem: two runs of one config and seed, different node ids."""
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, rounds=2, num_clients=4, per_round=2)
    rows = []
    for name in ("a", "b"):
        assert run_inprocess(cfg, tmp_path / name)["status"] == "completed"
        rows.append(read_metrics(tmp_path / name / "metrics.jsonl"))
    a, b = rows
    for key in ("accuracy", "loss", "train_loss", "federated_accuracy", "federated_loss"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key
    for ra, rb in zip(a[1:], b[1:], strict=True):
        assert [c["partition_id"] for c in ra["clients"]] == [
            c["partition_id"] for c in rb["clients"]]
        assert [c["node_id"] for c in ra["clients"]] != [c["node_id"] for c in rb["clients"]]


def test_a_duplicate_partition_id_ends_the_run_with_a_clear_error(tiny_backbones,
                                                                  tmp_path) -> None:
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, rounds=1, num_clients=3, per_round=2)
    with pytest.raises(AggregationError, match="partition id 0 is claimed by 2 nodes"):
        _run(cfg, tmp_path, _lying({1: 0}))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "claimed by 2 nodes" in summary["reason"]


def test_an_out_of_range_partition_is_excluded_and_recorded(tiny_backbones, tmp_path) -> None:
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, rounds=2, num_clients=3, per_round=2)
    assert _run(cfg, tmp_path, _lying({2: 3}))["status"] == "completed"
    first, second = read_metrics(tmp_path / "metrics.jsonl")[1:]
    (excluded,) = first["excluded_nodes"]
    assert excluded["partition_id"] is None and "out of range" in excluded["reason"]
    assert "excluded_nodes" not in second  # recorded once
    for row in (first, second):
        assert sorted(c["partition_id"] for c in row["clients"]) == [0, 1]


def test_the_ledger_and_metrics_name_the_partition_beside_the_node(tiny_backbones,
                                                                   tmp_path) -> None:
    dp = {"mode": "sample", "randomness": "seeded", "target_epsilon": 8.0}
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, rounds=1, num_clients=3,
                      per_round=2, dp=dp)
    assert run_inprocess(cfg, tmp_path)["status"] == "completed"
    (row,) = read_metrics(tmp_path / "metrics.jsonl")[1:]
    clients = {c["node_id"]: c["partition_id"] for c in row["clients"]}
    assert len(clients) == 2 and set(clients.values()) <= {0, 1, 2}
    assert [c["partition_id"] for c in row["clients"]] == sorted(clients.values())
    ledger = [json.loads(line) for line in
              (tmp_path / "privacy.jsonl").read_text().splitlines()]
    assert len(ledger) == 2
    for entry in ledger:
        assert entry["level"] == "sample"
        assert clients[entry["node"]] == entry["partition_id"]
    partitions = json.loads((tmp_path / "partitions.json").read_text())["clients"]
    assert {str(e["partition_id"]) for e in ledger} <= set(partitions)
