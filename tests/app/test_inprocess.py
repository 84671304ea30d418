"""The real ServerApp + ClientApp through the in-process grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from securefed.app import client_app as client_module
from securefed.app.grid import InProcessGrid
from securefed.app.identify import register_identify
from securefed.app.launcher import preflight, run_inprocess
from securefed.app.runtime import dataset_for, heldout_split, tuned_model
from securefed.app.server_app import run_server
from securefed.exceptions import AggregationError, ConfigError, OfflineError, UnknownNameError
from securefed.report.recorder import SUMMARY_KEYS, read_metrics
from strategies.records import read_payload, write_payload
from tests.app.conftest import tiny_config


@pytest.mark.parametrize(("model_type", "dataset", "method"), [
    ("bert", "bbc-news", "lora"),
    ("bert", "tweet-sentiment", "bitfit"),
    ("vit", "digits", "federa"),
    ("vit", "digits", "prompt"),
    ("roberta", "bbc-news", "ffa-lora"),
    ("dinov2", "cifar10-samples", "adapter"),
    ("clip", "mnist-5k", "prefix"),
])
def test_run_writes_a_complete_run_directory(tiny_backbones, tmp_path, model_type, dataset,
                                             method) -> None:
    cfg = tiny_config(tiny_backbones[model_type], tmp_path, dataset=dataset, method_name=method)
    summary = run_inprocess(cfg, tmp_path)
    for name in ("config.toml", "partitions.json", "metrics.jsonl", "summary.json",
                 "accuracy.png", "loss.png"):
        assert (tmp_path / name).is_file(), name
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["status"] == "completed" and summary["method"] == method
    assert len(summary["accuracy_per_round"]) == cfg.federation.rounds + 1
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["bytes_up_per_client"] > 0 and row["bytes_down_per_client"] > 0
        assert row["rejected_replies"] == 0 and len(row["clients"]) == 2
        assert 0.0 <= row["accuracy"] <= 1.0
    parts = json.loads((tmp_path / "partitions.json").read_text())
    assert sum(sum(c) for c in parts["clients"].values()) == len(
        dataset_for(cfg.data, cfg.experiment.seed).train)  # every training example, once
    assert (tmp_path / "adapter" / "securefed_method.json").is_file()


def test_peft_export_reproduces_the_runs_logits(tiny_backbones, tmp_path) -> None:
    from peft import PeftModel

    from securefed.models import build_classifier, resolve_backbone

    cfg = tiny_config(tiny_backbones["bert"], tmp_path, method_name="lora")
    summary = run_inprocess(cfg, tmp_path)
    tm = tuned_model(cfg)  # the server's model, holding the final global adapter
    batch = next(iter(heldout_split(cfg).batches(8, shuffle=False)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    tm.model.eval()
    with torch.no_grad():
        run_logits = tm.model(**inputs).logits
        base = build_classifier(resolve_backbone(str(tiny_backbones["bert"])), 5, seed=123)
        stock = PeftModel.from_pretrained(base, summary["adapter_dir"]).eval()
        torch.testing.assert_close(stock(**inputs).logits, run_logits)


def test_malformed_reply_from_a_real_client_is_rejected_and_counted(tiny_backbones,
                                                                    tmp_path) -> None:
    """A client mod corrupts one node's real payload; the round goes on without it."""
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, num_clients=3, per_round=3,
                      federation={"min_replies": 2})

    def nan_mod(msg: Message, ctx: Context, call_next):
        reply = call_next(msg, ctx)
        if int(ctx.node_config["partition-id"]) == 0 and msg.metadata.message_type == "train":
            payload = read_payload(reply.content)
            key = next(iter(payload))
            payload[key] = np.full_like(payload[key], np.nan)
            content = RecordDict({**write_payload(payload),
                                  "metrics": reply.content.metric_records["metrics"]})
            return Message(content, reply_to=msg)
        return reply

    app = register_identify(ClientApp(mods=[nan_mod]))
    app.train()(client_module.handle_train)
    app.evaluate()(client_module.handle_evaluate)
    run_config = {"config-file": "", "run-dir": str(tmp_path)}
    from securefed.config import to_flat

    run_config.update(to_flat(cfg))
    summary = run_server(InProcessGrid(app, 3, run_config), run_config)
    assert summary["rejected_replies_total"] == 2  # one per round
    for row in read_metrics(tmp_path / "metrics.jsonl")[1:]:
        (rejected,) = row["rejected"]
        assert "non-finite" in rejected["reason"] and len(row["clients"]) == 2


def test_too_few_valid_replies_stops_cleanly_with_a_summary(tiny_backbones, tmp_path) -> None:
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, num_clients=2, per_round=2)
    run_config = {"config-file": "", "run-dir": str(tmp_path)}
    from securefed.config import to_flat

    run_config.update(to_flat(cfg))
    grid = InProcessGrid(client_module.app, 2, run_config,
                         drop=lambda m: m.metadata.message_type == "train")
    with pytest.raises(AggregationError, match="0 valid replies of 2 sampled, 2 required"):
        run_server(grid, run_config)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "no reply" in summary["reason"]


def test_minilm_real_weights_few_samples(tmp_path) -> None:
    """The packaged all-MiniLM-L6-v2 through the whole app, a few samples per client."""
    cfg = tiny_config(Path("unused"), tmp_path, rounds=1, num_clients=2, per_round=2,
                      model={"backbone": "minilm-l6", "max_length": 32},
                      data={"max_train": 24, "max_test": 10})
    summary = run_inprocess(cfg, tmp_path)
    assert summary["status"] == "completed"
    assert summary["trainable_params"] < 100_000  # LoRA r=8 on q/v + head, not 22.7M
    assert summary["backbone"] == "minilm-l6"


@pytest.mark.parametrize(("set_", "error", "match"), [
    ({"method": {"name": "lorra"}}, UnknownNameError, r"unknown tuning method 'lorra'.*lora"),
    ({"method": {"name": "lora", "lora": {"rank": 4}}}, ConfigError, r"rank"),
    ({"method": {"name": "lora", "lora": {"r": 0}}}, ConfigError, r"\br\b"),
    ({"data": {"dataset": "bbc-newz"}}, UnknownNameError, r"bbc-news"),
    ({"data": {"partitioner": "dirichlett"}}, UnknownNameError, r"dirichlet"),
    ({"model": {"backbone": "someorg/not-a-model"}}, OfflineError, r"minilm-l6"),
])
def test_preflight_rejects_bad_names_before_anything_runs(tiny_backbones, tmp_path, set_,
                                                          error, match) -> None:
    with pytest.raises(error, match=match):  # method names and parameters: when built
        preflight(tiny_config(tiny_backbones["bert"], tmp_path, **set_))


def test_capture_saves_one_clients_real_reply(tiny_backbones, tmp_path) -> None:
    """[capture] round 2, client 1: the reply the server got, before aggregation."""
    from safetensors.numpy import load_file

    cfg = tiny_config(tiny_backbones["bert"], tmp_path, rounds=2, num_clients=3,
                      per_round=2, capture={"round": 2, "client_index": 1})
    run_inprocess(cfg, tmp_path)
    out = tmp_path / "captures" / "round-2-client-1"
    meta = json.loads((out / "meta.json").read_text())
    row = read_metrics(tmp_path / "metrics.jsonl")[2]
    assert meta["round"] == 2 and meta["client_index"] == 1  # its place in the sample
    assert {"partition_id": meta["partition_id"], "node_id": meta["node_id"]} in row["clients"]
    payload, sent = load_file(str(out / "payload.safetensors")), load_file(
        str(out / "global.safetensors"))
    assert set(payload) == set(sent) == set(tuned_model(cfg).payload())
    assert any(not np.array_equal(payload[k], sent[k]) for k in payload)  # it trained
    assert [p.name for p in (tmp_path / "captures").iterdir()] == ["round-2-client-1"]


def _hostile_run(tiny_backbones, tmp_path, mod, **tables):
    """run_server with real clients, node 0's train reply rewritten by ``mod``."""
    from securefed.config import to_flat

    cfg = tiny_config(tiny_backbones["bert"], tmp_path, num_clients=2, per_round=2, rounds=1,
                      **tables)

    def rewrite(msg: Message, ctx: Context, call_next):
        reply = call_next(msg, ctx)
        if int(ctx.node_config["partition-id"]) == 0 and msg.metadata.message_type == "train":
            return mod(reply)
        return reply

    app = register_identify(ClientApp(mods=[rewrite]))
    app.train()(client_module.handle_train)
    app.evaluate()(client_module.handle_evaluate)
    run_config = {"config-file": "", "run-dir": str(tmp_path)}
    run_config.update(to_flat(cfg))
    return run_server, InProcessGrid(app, 2, run_config), run_config


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_weight_of_1e308_is_rejected_and_the_run_fails_with_its_reason(tiny_backbones,
                                                                         tmp_path) -> None:
    """Finding 5: ``num-examples = 1e308`` used to make the global ``inf``."""
    from flwr.app import MetricRecord

    def huge(reply: Message) -> Message:
        reply.content["metrics"] = MetricRecord({**reply.content["metrics"],
                                                 "num-examples": 1e308})
        return reply

    run, grid, run_config = _hostile_run(tiny_backbones, tmp_path, huge)
    with pytest.raises(AggregationError, match="1 valid replies of 2 sampled, 2 required"):
        run(grid, run_config)
    summary = _summary(tmp_path)
    assert summary["status"] == "failed" and "max_weight=65536" in summary["reason"]


def test_a_reply_of_another_serialisation_type_fails_the_user_dp_round_with_a_summary(
        tiny_backbones, tmp_path) -> None:
    """Finding 5: a non-numpy Array crashed the server-side clipping wrapper with a bare
    TypeError; under strict user-level DP it now ends the run as a PrivacyError."""
    from securefed.exceptions import PrivacyError

    def torch_stype(reply: Message) -> Message:
        (array,) = [a for a in reply.content["arrays"].values()]
        array.__dict__["stype"] = "torch.Tensor"
        return reply

    user = {"clipping": "server-fixed", "noise_multiplier": 0.8, "clipping_norm": 0.5,
            "randomness": "seeded", "sampling": "fixed", "delta": 1e-3,
            "target_epsilon": 100.0}
    run, grid, run_config = _hostile_run(tiny_backbones, tmp_path, torch_stype, user_dp=user)
    with pytest.raises(PrivacyError, match=r"serialisation type 'torch\.Tensor'"):
        run(grid, run_config)
    summary = _summary(tmp_path)
    assert summary["status"] == "failed" and "torch.Tensor" in summary["reason"]


def test_any_error_in_aggregation_ends_the_run_with_a_failed_summary(tiny_backbones, tmp_path,
                                                                     monkeypatch) -> None:
    """An error that is not securefed's own (a bug, a library failure) still writes
    ``summary.json`` with ``status = "failed"`` and the reason, and surfaces typed."""
    import strategies.adapter_fedavg as fedavg

    def broken(payloads, weights):
        raise ZeroDivisionError("injected failure in the weighted mean")

    monkeypatch.setattr(fedavg, "weighted_mean_by_key", broken)
    run, grid, run_config = _hostile_run(tiny_backbones, tmp_path, lambda reply: reply)
    with pytest.raises(AggregationError, match="ZeroDivisionError: injected failure") as info:
        run(grid, run_config)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    summary = _summary(tmp_path)
    assert summary["status"] == "failed"
    assert summary["reason"] == "ZeroDivisionError: injected failure in the weighted mean"
