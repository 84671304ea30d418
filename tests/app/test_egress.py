"""What leaves a client, per mode: every message real clients sent in a real round.

A spying in-process grid records each reply the server receives and the kind of
message it answers; each test runs one round of one mode through the real ServerApp
and ClientApp (mods included) and checks every reply against the run's allow-list
(``summary.json`` ``client_egress``) and against the statistics that must not leave.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from securefed.app import client_app as client_module
from securefed.app.egress import LEDGER, client_egress, egress_for
from securefed.app.egress_mod import EGRESS_ERROR_CODE, enforce, reply_kind
from securefed.app.grid import InProcessGrid
from securefed.app.identify import register_identify
from securefed.app.nodes import prepare_node_configs
from securefed.app.private_training import load_accountant
from securefed.app.runtime import tuned_model
from securefed.app.server_app import run_server
from securefed.config import ExperimentConfig, to_flat
from securefed.exceptions import AggregationError, ConfigError, PrivacyError
from securefed.report.recorder import read_metrics
from strategies.records import write_payload
from tests.app.test_secagg_inprocess import N, _cfg

DP = {"mode": "sample", "randomness": "seeded", "target_epsilon": 8.0}
USER = {"clipping": "client-fixed", "noise_multiplier": 0.8, "clipping_norm": 0.5,
        "randomness": "seeded", "sampling": "fixed", "delta": 1e-3, "target_epsilon": 100.0}
PRIVATE_STATS = {"train-loss", "train-accuracy", "train-steps", "train-seconds",
                 "train-examples", "eval-loss", "eval-accuracy", "secure-clipped",
                 "secure-max-abs-update"}


class _Spy(InProcessGrid):
    """Records every reply the server receives, with the kind of message it answers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kinds: dict[str, str] = {}
        self.sent: list[tuple[str, Message]] = []

    def push_messages(self, messages):
        messages = list(messages)
        kinds = [reply_kind(m) for m in messages]
        ids = list(super().push_messages(messages))
        self.kinds.update(zip(ids, kinds, strict=True))
        return ids

    def pull_messages(self, message_ids):
        out = list(super().pull_messages(message_ids))
        self.sent.extend((self.kinds[m.metadata.reply_to_message_id], m) for m in out)
        return out


def _run(cfg: ExperimentConfig, out: Path, app: ClientApp | None = None
         ) -> tuple[dict[str, Any], _Spy]:
    run_config: dict[str, Any] = {"config-file": "", "run-dir": str(out), **to_flat(cfg)}
    grid = _Spy(app or client_module.app, cfg.data.num_clients, run_config,
                node_configs=prepare_node_configs(cfg, out))
    return run_server(grid, run_config), grid


def _held(reply: Message) -> dict[str, Any]:
    content = reply.content
    return {"arrays": set(content.array_records),
            "configs": {n: set(r) for n, r in content.config_records.items()},
            "metrics": {n: dict(r) for n, r in content.metric_records.items()}}


def _check_within_allow_list(summary: dict[str, Any], grid: _Spy) -> dict[str, list[dict]]:
    """Every non-error reply holds only what ``client_egress`` names; by kind."""
    replies = summary["client_egress"]["replies"]
    seen: dict[str, list[dict]] = {}
    for kind, reply in grid.sent:
        assert not reply.has_error(), (kind, reply.error.reason)
        shape, held = replies[kind], _held(reply)
        assert held["arrays"] <= set(shape["arrays"]), kind
        for name, keys in held["configs"].items():
            assert keys <= set(shape["configs"][name]), (kind, name, keys)
        for name, metrics in held["metrics"].items():
            assert set(metrics) <= set(shape["metrics"][name]), (kind, name, metrics)
            for key, value in shape["fixed"].items():
                assert metrics.get(key, value) == value
        seen.setdefault(kind, []).append(held)
    return seen


def _metric_keys(held: list[dict]) -> set[str]:
    return {k for h in held for m in h["metrics"].values() for k in m}


def test_plaintext_sends_the_payload_and_clear_statistics(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, federation={"evaluate_clients": 2})
    summary, grid = _run(cfg, tmp_path)
    assert summary["status"] == "completed"
    assert summary["client_egress"] == client_egress(cfg)
    assert summary["client_egress"]["modes"] == ["plaintext"]
    seen = _check_within_allow_list(summary, grid)
    assert set(seen) == {"identify", "train", "evaluate"}
    assert all(h["arrays"] == {"arrays"} for h in seen["train"])
    assert _metric_keys(seen["train"]) == {"num-examples", "train-loss", "train-accuracy",
                                           "train-steps", "train-seconds"}
    assert _metric_keys(seen["evaluate"]) == {"num-examples", "eval-loss", "eval-accuracy"}
    assert {h["metrics"]["metrics"]["num-examples"] for h in seen["train"]} != {1}


def test_dp_sends_weight_one_and_the_ledger_only(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, dp=DP)
    summary, grid = _run(cfg, tmp_path)
    assert summary["status"] == "completed"
    assert summary["client_egress"]["client_stats"] == "off"
    seen = _check_within_allow_list(summary, grid)
    assert set(seen) == {"identify", "train"} and len(seen["train"]) == N
    assert _metric_keys(seen["train"]) == {"num-examples"} | LEDGER
    assert {h["metrics"]["metrics"]["num-examples"] for h in seen["train"]} == {1}
    assert 0 < summary["epsilon"] <= 8.0  # the ledger still reaches privacy.jsonl


def test_user_dp_sends_the_clipped_payload_and_weight_one(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, user_dp=USER)
    summary, grid = _run(cfg, tmp_path)
    assert summary["status"] == "completed"
    seen = _check_within_allow_list(summary, grid)
    assert set(seen) == {"identify", "train"}
    assert all(h["arrays"] == {"arrays"} for h in seen["train"])
    assert _metric_keys(seen["train"]) == {"num-examples"}  # no train-examples, no loss
    assert {h["metrics"]["metrics"]["num-examples"] for h in seen["train"]} == {1}


@pytest.mark.parametrize(("mode", "kinds"), [
    ("secagg", {"secagg+/setup", "secagg+/share-keys", "secagg+/masked-input",
                "secagg+/consistency", "secagg+/unmask"}),
    ("ckks", {"ckks/enroll", "ckks/keygen", "ckks/setup", "ckks/decrypt"}),
])
def test_secure_modes_send_protocol_fields_only(tiny_backbones, tmp_path, mode,
                                                kinds) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": mode})
    summary, grid = _run(cfg, tmp_path)
    assert summary["status"] == "completed"
    seen = _check_within_allow_list(summary, grid)
    assert set(seen) == kinds | {"identify"}  # never a plaintext train reply
    for held in (h for k, hs in seen.items() if k != "identify" for h in hs):
        assert held["arrays"] == set() and held["metrics"] == {}  # no payload, no statistic
        assert set(held["configs"]) == {"secure"}


def test_without_the_egress_mod_secagg_clients_leaked_statistics(tiny_backbones,
                                                                tmp_path) -> None:
    """The finding, reproduced: without the exit check, loss and accuracy left next to
    the masked input."""
    cfg = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": "secagg"})
    unguarded = register_identify(ClientApp(mods=client_module.MODS[1:]))
    unguarded.train()(client_module.train)
    _, grid = _run(cfg, tmp_path, app=unguarded)
    leaked = _metric_keys([_held(m) for k, m in grid.sent if k == "secagg+/masked-input"])
    assert {"train-loss", "train-accuracy"} <= leaked


def test_a_server_that_skips_masking_gets_an_error_not_the_update(tiny_backbones,
                                                                 tmp_path) -> None:
    """Under SecAgg+, a plain train message (no protocol record) would return the
    update in the clear; the exit turns the reply into a typed refusal."""
    cfg = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": "secagg"})
    run_config: dict[str, Any] = {"config-file": "", "run-dir": str(tmp_path), **to_flat(cfg)}
    grid = InProcessGrid(client_module.app, N, run_config)
    node = next(iter(grid.get_node_ids()))
    content = RecordDict({**write_payload(tuned_model(cfg).initial),
                          "config": ConfigRecord({"server-round": 1})})
    msg = Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node,
                  group_id="1")
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error() and not reply.has_content()
    assert reply.error.code == EGRESS_ERROR_CODE
    assert "'train' reply may not leave this client" in reply.error.reason


def test_a_run_config_without_secure_aggregation_cannot_downgrade_an_enrolled_node(
        tiny_backbones, tmp_path) -> None:
    """A deviating server sends nodes enrolled for SecAgg+ (a roster in their own node
    config) a run config with ``mode = "none"``: the nodes train, but no plaintext
    update leaves them, and the run fails with the nodes' reasons."""
    secure = _cfg(tiny_backbones["bert"], tmp_path, secure={"mode": "secagg"})
    plain = _cfg(tiny_backbones["bert"], tmp_path)
    run_config: dict[str, Any] = {"config-file": "", "run-dir": str(tmp_path),
                                  **to_flat(plain)}
    grid = _Spy(client_module.app, N, run_config,
                node_configs=prepare_node_configs(secure, tmp_path))
    with pytest.raises(AggregationError):
        run_server(grid, run_config)
    assert grid.sent and all(reply.has_error() and not reply.has_content()
                             for kind, reply in grid.sent if kind == "train")
    assert all("holds a roster" in reply.error.reason for kind, reply in grid.sent
               if kind == "train")


def test_noised_statistics_are_charged_to_the_clients_accountant(tiny_backbones,
                                                                 tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, dp=DP,
               report={"client_stats": "noised", "stats_noise_multiplier": 4.0},
               federation={"evaluate_clients": 2})
    summary, grid = _run(cfg, tmp_path)
    assert summary["status"] == "completed"
    seen = _check_within_allow_list(summary, grid)
    assert _metric_keys(seen["train"]) == {"num-examples", "train-loss",
                                           "train-accuracy"} | LEDGER
    assert _metric_keys(seen["evaluate"]) == {"num-examples", "eval-loss", "eval-accuracy"}
    for node, context in grid.contexts.items():
        history = load_accountant(context, cfg, int(context.node_config["partition-id"])).history
        releases = sum(n for s, q, n in history if (s, q) == (4.0, 1.0))
        evaluated = sum(1 for k, m in grid.sent
                        if k == "evaluate" and m.metadata.src_node_id == node)
        assert releases == 1 + evaluated  # one per training round, one per evaluation
    assert 0 < summary["epsilon"] <= 8.0  # calibration reserved room for the releases


def test_secure_sum_statistics_travel_inside_the_mask(tiny_backbones, tmp_path) -> None:
    bb = tiny_backbones["bert"]
    _, plain_grid = _run(_cfg(bb, tmp_path / "p"), tmp_path / "p")
    losses = [m.content.metric_records["metrics"]["train-loss"]
              for k, m in plain_grid.sent if k == "train"]
    cfg = _cfg(bb, tmp_path / "s", secure={"mode": "secagg", "on_overflow": "clip"},
               report={"client_stats": "secure-sum"})
    summary, grid = _run(cfg, tmp_path / "s")
    assert summary["status"] == "completed"
    assert summary["client_egress"]["summed_in_secure_channel"] == [
        "secure-clipped", "train-loss", "train-accuracy"]
    seen = _check_within_allow_list(summary, grid)
    assert _metric_keys([h for hs in seen.values() for h in hs]) == set()
    (row,) = read_metrics(tmp_path / "s" / "metrics.jsonl")[1:]
    summed = row["secure"]["secure_stats"]
    assert summed["train-loss"] == pytest.approx(np.mean(losses), abs=1e-6)
    assert summed["secure-clipped"] == row["secure"]["secagg_clipped"] == 0
    assert row["train_loss"] == pytest.approx(np.mean(losses), abs=1e-6)


@pytest.mark.parametrize(("tables", "match"), [
    ({"dp": DP, "report": {"client_stats": "secure-sum"}}, "valid choices: auto, noised, off"),
    ({"dp": DP, "report": {"client_stats": "clear"}}, "no sound mechanism in mode dp"),
    ({"user_dp": USER, "dp": DP, "report": {"client_stats": "noised"}},
     "valid choices: auto, off"),
    ({"secure": {"mode": "ckks"}, "report": {"client_stats": "noised"}},
     "valid choices: auto, off, secure-sum"),
    ({"secure": {"mode": "secagg"}, "federation": {"evaluate_clients": 2}},
     "set evaluate_clients = 0"),
])
def test_statistics_without_a_sound_mechanism_are_refused(tiny_backbones, tmp_path, tables,
                                                          match) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(tiny_backbones["bert"], tmp_path, **tables)


def test_summary_lists_what_left_in_the_clear(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, dp=DP, secure={"mode": "ckks"})
    egress = client_egress(cfg)
    assert egress["modes"] == ["dp", "ckks"]
    assert "train" not in egress["replies"]  # the payload never leaves unencrypted
    metrics = egress["replies"]["ckks/setup"]["metrics"]["metrics"]
    assert set(metrics) == LEDGER and not set(metrics) & PRIVATE_STATS
    json.dumps(egress)  # summary.json-ready


def test_a_stray_metric_is_dropped_and_a_stray_record_refused() -> None:
    allow = egress_for(ExperimentConfig.from_dict({"dp": DP}))
    base = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                   dst_node_id=1, message_type=MessageType.TRAIN)
    reply = Message(RecordDict({**write_payload({"w": np.zeros(2, np.float32)}),
                                "metrics": MetricRecord({"num-examples": 1,
                                                         "train-loss": 0.3})}),
                    reply_to=_delivered(base))
    enforce("train", reply, allow)
    assert dict(reply.content.metric_records["metrics"]) == {"num-examples": 1}
    reply.content["leak"] = ConfigRecord({"x": 1})
    with pytest.raises(PrivacyError, match="ConfigRecord 'leak' may not leave"):
        enforce("train", reply, allow)
    heavy = Message(RecordDict({**write_payload({"w": np.zeros(2, np.float32)}),
                                "metrics": MetricRecord({"num-examples": 40})}),
                    reply_to=_delivered(base))
    with pytest.raises(PrivacyError, match="'num-examples' must be 1"):
        enforce("train", heavy, allow)


def _delivered(msg: Message) -> Message:
    """A message as a client receives it (ids set), so that it can be replied to."""
    from securefed.app.grid import transport

    msg.metadata.__dict__["_message_id"] = "m1"
    msg.metadata.__dict__["_src_node_id"] = 0
    return transport(msg)
