"""Sample-level DP-SGD clients through the real apps: ledger, budgets, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from securefed.app.private_training import load_accountant, run_private_round
from securefed.config import ExperimentConfig
from securefed.exceptions import PrivacyBudgetExhausted, PrivacyError
from securefed.methods import create_method
from securefed.report.recorder import read_metrics
from tests.app.test_secagg_inprocess import N, _cfg, _run
from tests.methods.conftest import Backbone

DP = {"mode": "sample", "randomness": "seeded", "target_epsilon": 8.0}


def _ledger(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "privacy.jsonl").read_text().splitlines()]


def test_dp_run_writes_a_ledger_and_stays_within_the_target(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, "lora", rounds=2, dp=DP)
    summary = _run(cfg, tmp_path)
    assert summary["status"] == "completed"
    rows = _ledger(tmp_path)
    assert len(rows) == 2 * N and {r["round"] for r in rows} == {1, 2}
    for node in {r["node"] for r in rows}:
        first, second = sorted((r for r in rows if r["node"] == node), key=lambda r: r["round"])
        assert 0 < first["epsilon"] < second["epsilon"] <= 8.0  # grows, within target
        assert second["total_steps"] == first["steps"] + second["steps"]
        assert first["noise_multiplier"] > 0 and first["clip_norm"] == 1.0
    assert summary["epsilon"] == max(r["epsilon"] for r in rows)
    assert summary["delta"] == 1e-5 and summary["user_level_epsilon"] is None
    assert (tmp_path / "epsilon.png").is_file()
    assert [r["epsilon"] for r in read_metrics(tmp_path / "metrics.jsonl")[1:]] == sorted(
        r["epsilon"] for r in read_metrics(tmp_path / "metrics.jsonl")[1:])


def test_budget_refusal_stops_the_run_cleanly(tiny_backbones, tmp_path) -> None:
    one = _cfg(tiny_backbones["bert"], tmp_path / "one", "bitfit", rounds=1,
               dp={**DP, "noise_multiplier": 1.0})
    _run(one, tmp_path / "one")
    after_one = max(r["epsilon"] for r in _ledger(tmp_path / "one"))
    two = _cfg(tiny_backbones["bert"], tmp_path / "two", "bitfit", rounds=2,
               dp={**DP, "noise_multiplier": 1.0, "budget_epsilon": after_one * 1.01})
    summary = _run(two, tmp_path / "two")
    assert summary == json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["status"] == "stopped" and "PrivacyBudgetExhausted" in summary["reason"]
    assert summary["reason"].startswith("too few clients within their privacy budget")
    assert (tmp_path / "two" / "adapter").is_dir()  # the last global adapter is kept
    assert {r["round"] for r in _ledger(tmp_path / "two")} == {1}  # nothing charged twice


def test_dp_under_secure_aggregation(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, "ffa-lora", dp=DP,
               secure={"mode": "secagg"})
    assert _run(cfg, tmp_path)["status"] == "completed"
    assert len(_ledger(tmp_path)) == N


def _tiny_run_config(tmp_path: Path, **dp: object) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"dp": {**DP, **dp}, "train": {"batch_size": 4},
                                       "federation": {"rounds": 3, "clients_per_round": 1},
                                       "data": {"num_clients": 1}})


def test_accountant_survives_a_client_restart_without_double_counting(tmp_path) -> None:
    backbone = Backbone("bert")
    method = create_method("bitfit")
    model = method.apply(backbone.model(), backbone.arch, seed=0)
    inputs, labels = backbone.inputs(12), backbone.labels(12)
    cfg = _tiny_run_config(tmp_path)
    node_config = {"partition-id": 0, "state-dir": str(tmp_path / "state")}

    def context() -> Context:
        return Context(run_id=1, node_id=1, node_config=dict(node_config),
                       state=RecordDict(), run_config={})

    ctx = context()
    _, first = run_private_round(cfg, ctx, 0, model, inputs, labels, seed=1)
    restarted = context()  # a new ClientApp process: empty context.state, same state dir
    _, second = run_private_round(cfg, restarted, 0, model, inputs, labels, seed=2)
    assert second["dp-total-steps"] == first["dp-steps"] + second["dp-steps"]
    assert second["dp-epsilon"] > first["dp-epsilon"]
    assert load_accountant(restarted, cfg, 0).num_steps == second["dp-total-steps"]
    with pytest.raises(PrivacyError, match="cannot be loaded"):
        load_accountant(restarted, _tiny_run_config(tmp_path, accountant="prv"), 0)


def test_refusal_happens_before_training(tmp_path) -> None:
    backbone = Backbone("bert")
    method = create_method("bitfit")
    model = method.apply(backbone.model(), backbone.arch, seed=0)
    before = {k: v.copy() for k, v in method.payload(model).items()}
    cfg = _tiny_run_config(tmp_path, noise_multiplier=0.5, budget_epsilon=0.01)
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(PrivacyBudgetExhausted, match=r"budget 0\.01"):
        run_private_round(cfg, ctx, 0, model, backbone.inputs(8), backbone.labels(8), seed=0)
    after = method.payload(model)
    assert all((after[k] == before[k]).all() for k in before)
    assert load_accountant(ctx, cfg, 0).num_steps == 0


@pytest.mark.parametrize(("method", "params", "match"), [
    ("ia3", {}, "not available for method 'ia3'"),
    ("prompt", {}, "not available for method 'prompt' on text"),
    ("full", {}, "freeze_embeddings = true"),
])
def test_dp_refuses_methods_opacus_cannot_privatise(tiny_backbones, tmp_path, method, params,
                                                    match) -> None:
    from securefed.app.launcher import preflight
    from securefed.exceptions import ConfigError
    from tests.app.conftest import tiny_config

    cfg = tiny_config(tiny_backbones["bert"], tmp_path, method_name=method, dp=DP,
                      method=params, federation={"evaluate_clients": 0})
    with pytest.raises(ConfigError, match=match):
        preflight(cfg)
