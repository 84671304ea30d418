"""SecAgg+ through the real ServerApp and ClientApp (mods included), in-process grid.

The in-process grid runs the same code as Flower's simulation engine and SuperLink
deployments and serialises every message with Flower's own object encoding; dropouts
are simulated by messages that never get a reply (``InProcessGrid(drop=...)``). Node
ids are pinned to ``1000 + partition id`` here (:data:`NODE`) so that a drop can name a
node before the grid exists; sampling and reports go by partition id either way
(``tests/app/test_identity.py`` runs with Flower-style random ids).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from securefed.app import client_app as client_module
from securefed.app.grid import InProcessGrid
from securefed.app.identify import register_identify
from securefed.app.launcher import preflight
from securefed.app.nodes import prepare_node_configs, provision_roster
from securefed.app.runtime import tuned_model
from securefed.app.secagg_mod import secagg_mod
from securefed.app.server_app import run_server
from securefed.config import ExperimentConfig, to_flat
from securefed.exceptions import AggregationError, ConfigError
from securefed.report.recorder import read_metrics
from strategies.records import read_payload, write_payload
from strategies.sum_only import PROTOCOL_RECORD
from tests.app.conftest import tiny_config

N = 4  # clients per round: complete neighbour graph k = 3, threshold t = 2
NODE = 1000  # node id of partition 0 (partition i: NODE + i)


def _run(cfg: ExperimentConfig, out: Path, *, drop: Callable[[Message], bool] | None = None,
         app: ClientApp | None = None, roster: bool | None = None,
         node_config: dict[str, Any] | None = None) -> dict[str, Any]:
    run_config: dict[str, Any] = {"config-file": "", "run-dir": str(out)}
    run_config.update(to_flat(cfg))
    n = cfg.data.num_clients
    if roster is None:  # what a deployment of this config gives its nodes
        nodes = prepare_node_configs(cfg, out)
    elif roster:
        nodes = provision_roster(out / "nodes", n)
    else:
        nodes = [{"partition-id": i, "num-partitions": n} for i in range(n)]
    grid = InProcessGrid(app or client_module.app, n, run_config, drop=drop,
                         node_configs=nodes, node_ids=[NODE + i for i in range(n)])
    for context in grid.contexts.values():
        context.node_config.update(node_config or {})
    return run_server(grid, run_config)


def _survivors(count: int, malicious: bool, **less: int) -> dict[str, int]:
    stages = ["setup", "share-keys", "masked-input", *(["consistency"] * malicious), "unmask"]
    return {s: count - less.get(s.replace("-", "_"), 0) for s in stages}


def _final(cfg: ExperimentConfig) -> dict[str, np.ndarray]:
    return tuned_model(cfg).payload()  # the server loads the final global adapter


def _cfg(backbone: Path, out: Path, method: str = "ffa-lora", rounds: int = 1,
         **tables: dict[str, Any]) -> ExperimentConfig:
    fed = {"evaluate_clients": 0, **tables.pop("federation", {})}
    return tiny_config(backbone, out, method_name=method, rounds=rounds, num_clients=N,
                       per_round=N, federation=fed, **tables)


def _stage_of(msg: Message) -> str | None:
    record = msg.content.config_records.get(PROTOCOL_RECORD)
    return None if record is None else str(record["stage"])


def _drop_at(stage: str, nodes: set[int]) -> Callable[[Message], bool]:
    return lambda m: _stage_of(m) == stage and m.metadata.dst_node_id in nodes


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 1e-5) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)


@pytest.mark.parametrize(("method", "form", "adversary"), [
    ("ffa-lora", "native", "malicious"), ("ffa-lora", "native", "semi-honest"),
    ("lora", "dense", "malicious"), ("bitfit", "native", "semi-honest")])
def test_secure_aggregate_equals_plaintext_fedavg(tiny_backbones, tmp_path, method,
                                                  form, adversary) -> None:
    bb = tiny_backbones["bert"]
    plain = _cfg(bb, tmp_path / "plain", method, federation={"payload_form": form})
    _run(plain, tmp_path / "plain")
    expected = _final(plain)
    secure = _cfg(bb, tmp_path / "secure", method, federation={"payload_form": form},
                  secure={"mode": "secagg", "adversary": adversary})
    summary = _run(secure, tmp_path / "secure")
    assert summary["status"] == "completed" and summary["secure_mode"] == "secagg"
    assert summary["secure_exactness"] == "exact"
    assert summary["secagg_adversary"] == adversary
    got = _final(secure)
    initial = tuned_model(secure).initial
    assert any(np.abs(got[k] - initial[k]).max() > 1e-4 for k in got)  # it trained
    _close(got, expected)  # quantisation error bound at c=1, 32 bits: ~1e-7
    (row,) = read_metrics(tmp_path / "secure" / "metrics.jsonl")[1:]
    assert row["secure"]["secagg_survivors"] == _survivors(N, adversary == "malicious")
    assert row["secure"]["secagg_adversary"] == adversary
    assert row["clients"] == [{"partition_id": i, "node_id": NODE + i} for i in range(N)]
    assert row["rejected_replies"] == 0


@pytest.mark.parametrize(("stage", "adversary"), [
    *[(s, "malicious") for s in ("setup", "share-keys", "masked-input", "consistency",
                                 "unmask")],
    ("share-keys", "semi-honest"), ("unmask", "semi-honest")])
def test_one_dropout_at_each_stage_still_gives_the_survivors_mean(tiny_backbones, tmp_path,
                                                                  stage, adversary) -> None:
    """Dropping node 1001 at any stage: the sum is over the clients whose masked input
    arrived, and equals plaintext FedAvg over exactly those clients."""
    bb = tiny_backbones["bert"]
    plain = _cfg(bb, tmp_path / "plain", federation={"min_replies": 3})
    in_sum = stage not in ("unmask", "consistency")  # after masking: still in the sum
    gone = {1001} if in_sum else set()
    _run(plain, tmp_path / "plain", drop=lambda m: m.metadata.message_type == "train"
         and m.metadata.dst_node_id in gone)
    expected = _final(plain)
    secure = _cfg(bb, tmp_path / "s", secure={"mode": "secagg", "adversary": adversary},
                  federation={"min_replies": 3})
    summary = _run(secure, tmp_path / "s", drop=_drop_at(stage, {1001}))
    assert summary["status"] == "completed"
    _close(_final(secure), expected)
    (row,) = read_metrics(tmp_path / "s" / "metrics.jsonl")[1:]
    survivors = row["secure"]["secagg_survivors"]
    assert survivors["unmask"] == N - 1
    assert (1 in [c["partition_id"] for c in row["clients"]]) is (not in_sum)
    if in_sum:
        assert [r["partition_id"] for r in row["rejected"]] == [1]


def test_a_roster_node_refuses_a_semi_honest_round(tiny_backbones, tmp_path) -> None:
    """A server cannot downgrade nodes that hold a roster to the semi-honest protocol."""
    cfg = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": "secagg",
                                                         "adversary": "semi-honest"})
    with pytest.raises(AggregationError, match="takes part only in malicious-mode"):
        _run(cfg, tmp_path, roster=True)


def test_a_node_without_roster_refuses_a_malicious_round(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": "secagg"})
    with pytest.raises(AggregationError, match="needs this node's roster"):
        _run(cfg, tmp_path, roster=False)


@pytest.mark.parametrize(("key", "value", "floor"), [
    ("securefed-secagg-min-clients", 5, "min_clients"),
    ("securefed-secagg-min-bits", 48, "min_bits"),
    ("securefed-secagg-max-clipping-range", 0.5, "max_clipping_range")])
def test_node_config_floors_refuse_a_weaker_setup(tiny_backbones, tmp_path, key, value,
                                                  floor) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": "secagg"})
    with pytest.raises(AggregationError, match=f"FloorError: .*{floor}") as info:
        _run(cfg, tmp_path, node_config={key: value})
    assert key in str(info.value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and floor in summary["reason"]


def test_too_many_dropouts_fail_the_run_with_a_typed_error(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": "secagg"},
               federation={"min_replies": 1})
    with pytest.raises(AggregationError, match="threshold t=2"):
        _run(cfg, tmp_path, drop=_drop_at("masked-input", {1001, 1002}))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "secure aggregation failed" in summary["reason"]


def test_fewer_survivors_than_min_replies_is_an_error(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": "secagg"})
    with pytest.raises(AggregationError, match="3 clients in the aggregate, 4 required"):
        _run(cfg, tmp_path, drop=_drop_at("share-keys", {1003}))


def test_lora_is_refused_unless_inexact_is_allowed_or_dense(tiny_backbones, tmp_path) -> None:
    bb = tiny_backbones["bert"]
    cfg = _cfg(bb, tmp_path, "lora", secure={"mode": "secagg"})
    with pytest.raises(ConfigError, match=r'payload_form = "dense".*allow_inexact'):
        preflight(cfg)
    inexact = _cfg(bb, tmp_path / "i", "lora", secure={"mode": "secagg",
                                                          "allow_inexact": True})
    preflight(inexact)
    summary = _run(inexact, tmp_path / "i")
    assert summary["secure_exactness"] == "inexact-allowed"
    dense = _cfg(bb, tmp_path / "d", "federa", secure={"mode": "secagg"},
                 federation={"payload_form": "dense"})
    preflight(dense)
    assert _run(dense, tmp_path / "d")["exact_under_sum"] is True


def test_out_of_range_update_is_refused_or_clipped_and_counted(tiny_backbones,
                                                               tmp_path) -> None:
    bb = tiny_backbones["bert"]
    tight = {"mode": "secagg", "clipping_range": 1e-6}
    cfg = _cfg(bb, tmp_path / "e", secure=tight)
    with pytest.raises(AggregationError, match=r"PrivacyError: .* exceed the secure-aggr"):
        _run(cfg, tmp_path / "e")
    clip = _cfg(bb, tmp_path / "c", secure={**tight, "on_overflow": "clip"})
    assert _run(clip, tmp_path / "c")["status"] == "completed"
    (row,) = read_metrics(tmp_path / "c" / "metrics.jsonl")[1:]
    assert row["secure"]["secagg_clipped"] > 0


def test_mods_after_secagg_run_before_masking(tiny_backbones, tmp_path) -> None:
    """A mod listed after ``secagg_mod`` changes the update *before* it is masked."""
    bb = tiny_backbones["bert"]

    def halve_update(msg: Message, ctx: Context, call_next) -> Message:
        reply = call_next(msg, ctx)
        if reply.has_error() or msg.metadata.message_type != "train":
            return reply
        g, new = read_payload(msg.content), read_payload(reply.content)
        half = {k: g[k] + (new[k] - g[k]) / 2 for k in g}
        return Message(RecordDict({**write_payload(half),
                                   "metrics": reply.content.metric_records["metrics"]}),
                       reply_to=msg)

    def app_with(mods: list) -> ClientApp:
        app = register_identify(ClientApp(mods=mods))
        app.train()(client_module.handle_train)
        app.evaluate()(client_module.handle_evaluate)
        return app

    plain = _cfg(bb, tmp_path / "p")
    _run(plain, tmp_path / "p", app=app_with([halve_update]))
    expected = _final(plain)
    secure = _cfg(bb, tmp_path / "s", secure={"mode": "secagg"})
    _run(secure, tmp_path / "s", app=app_with([secagg_mod, halve_update]))
    _close(_final(secure), expected)


def test_capture_under_secagg_saves_the_masked_input(tiny_backbones, tmp_path) -> None:
    from safetensors.numpy import load_file

    cfg = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": "secagg"},
               capture={"round": 1, "client_index": 2})
    _run(cfg, tmp_path)
    out = tmp_path / "captures" / "round-1-client-2"
    masked = load_file(str(out / "masked.safetensors"))["masked_input"]
    meta = json.loads((out / "meta.json").read_text())
    assert masked.dtype == np.uint64 and meta["bits"] == 32 and masked.max() < 2**32
    assert not (out / "payload.safetensors").exists()  # the server never saw plaintext
    assert masked.size == meta["vector_length"] + 1  # + the weight field


def _every_method() -> list[tuple[str, str]]:
    """(method, payload form) for every registered method; LoRA/FeDeRA go dense."""
    from securefed.methods import METHODS

    return [(name, "dense" if name in ("lora", "federa") else "native")
            for name in METHODS.names()]


@pytest.mark.parametrize(("method", "form"), _every_method())
def test_every_registered_method_aggregates_exactly_under_secagg(tiny_backbones, tmp_path,
                                                                 method, form) -> None:
    bb = tiny_backbones["bert"]
    plain = _cfg(bb, tmp_path / "p", method, federation={"payload_form": form})
    _run(plain, tmp_path / "p")
    expected = _final(plain)
    secure = _cfg(bb, tmp_path / "s", method, federation={"payload_form": form},
                  secure={"mode": "secagg"})
    assert _run(secure, tmp_path / "s")["secure_exactness"] == "exact"
    _close(_final(secure), expected)
