"""In-process runs: one run per directory, manifest, logs in flower.log, interruption."""

from __future__ import annotations

import json
import logging
import os
import signal

import numpy as np
import pytest

import securefed.app.client_app as client_module
from securefed.app.launcher import Interrupted, run_inprocess
from securefed.report.recorder import read_metrics
from securefed.rundir import MANIFEST, RunDirError, verify_manifest
from strategies.adapter_fedavg import AdapterFedAvg
from tests.app.conftest import tiny_config

USER_DP = {"clipping": "client-fixed", "noise_multiplier": 0.8, "clipping_norm": 0.5,
           "randomness": "seeded", "sampling": "fixed", "delta": 1e-3,
           "target_epsilon": 100.0}


def test_a_second_run_is_refused_and_overwrite_leaves_nothing_of_the_first(
        tiny_backbones, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(tiny_backbones["bert"], run, rounds=1, num_clients=2, per_round=2)
    run_inprocess(cfg, run)
    first = {f["path"] for f in json.loads((run / MANIFEST).read_text())["files"]}
    # what a DP run would have left behind
    (run / "privacy.jsonl").write_text('{"round": 1, "level": "sample", "epsilon": 7.99}\n')
    (run / "epsilon.png").write_bytes(b"\x89PNG")
    with pytest.raises(RunDirError, match="--overwrite"):
        run_inprocess(cfg, run)
    assert (run / "privacy.jsonl").is_file()
    summary = run_inprocess(cfg, run, overwrite=True)
    assert summary["status"] == "completed" and summary["epsilon"] is None
    assert not (run / "privacy.jsonl").exists() and not (run / "epsilon.png").exists()
    manifest = json.loads((run / MANIFEST).read_text())
    listed = {f["path"] for f in manifest["files"]}
    present = {p.relative_to(run).as_posix() for p in run.rglob("*")
               if p.is_file() and p.name != MANIFEST}
    assert listed == present == first
    assert {"summary.json", "metrics.jsonl", "progress.json", "flower.log",
            "config.toml"} <= listed
    assert manifest["status"] == "completed" and verify_manifest(run) == []


@pytest.mark.parametrize("tables", [
    {"secure": {"mode": "secagg"}, "federation": {"payload_form": "dense"}},
    {"secure": {"mode": "ckks"}, "method_name": "ffa-lora"},
    {"user_dp": USER_DP},
], ids=["secagg", "ckks", "user_dp"])
def test_no_false_fraction_evaluate_warning_and_flower_logs_in_flower_log(
        tiny_backbones, tmp_path, caplog, capfd, tables) -> None:
    method = tables.pop("method_name", "lora")
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, rounds=1, num_clients=3,
                      per_round=3, method_name=method, **tables)
    with caplog.at_level(logging.INFO):
        summary = run_inprocess(cfg, tmp_path)
    assert summary["status"] == "completed"
    log = (tmp_path / "flower.log").read_text()
    assert "[ROUND 1/1]" in log  # Flower's own lines went to the file ...
    out, err = capfd.readouterr()
    assert "[ROUND" not in out + err  # ... not to the terminal
    assert "fraction_evaluate" not in log + caplog.text + out + err


def test_flower_does_not_warn_about_fraction_evaluate_without_federated_evaluation(
        caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy = AdapterFedAvg(clients_per_round=2, min_replies=2, evaluate_clients=0,
                                 rng=np.random.default_rng(0))
    assert "fraction_evaluate" not in caplog.text
    assert strategy.configure_evaluate(1, None, None, None) == []  # type: ignore[arg-type]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_round_two_gives_an_interrupted_summary(tiny_backbones, tmp_path,
                                                            monkeypatch, signum) -> None:
    real = client_module.handle_train

    def train(msg, context):
        if msg.metadata.group_id == "2":
            os.kill(os.getpid(), signum)  # as from a terminal or a scheduler
        return real(msg, context)

    monkeypatch.setattr(client_module, "handle_train", train)
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, rounds=3, num_clients=2, per_round=2)
    with pytest.raises(Interrupted) as info:
        run_inprocess(cfg, tmp_path)
    assert info.value.signum == signum
    summary = json.loads((tmp_path / "summary.json").read_text())
    name = signal.Signals(signum).name
    assert summary["status"] == "interrupted" and summary["reason"] == f"interrupted by {name}"
    assert summary["last_completed_round"] == 1 == read_metrics(
        tmp_path / "metrics.jsonl")[-1]["round"]
    assert summary["method"] == "lora" and summary["trainable_params"] > 0
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["status"] == "interrupted" and verify_manifest(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
