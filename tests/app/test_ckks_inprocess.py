"""CKKS aggregation through the real ServerApp and ClientApp (mods), in-process grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import tenseal as ts
from flwr.app import Context, Message

from securefed.app import client_app as client_module
from securefed.app.grid import InProcessGrid
from securefed.app.launcher import preflight
from securefed.app.server_app import run_server
from securefed.config import ExperimentConfig, to_flat
from securefed.exceptions import AggregationError, ConfigError
from securefed.report.recorder import read_metrics
from strategies.homomorphic import HomomorphicAggregation
from strategies.sum_only import PROTOCOL_RECORD
from tests.app.test_secagg_inprocess import N, _cfg, _close, _final, _run, _stage_of


def _ckks(backbone: Path, out: Path, role: str = "authority", *,
          federation: dict | None = None, **secure: object) -> ExperimentConfig:
    return _cfg(backbone, out, secure={"mode": "ckks", "key_role": role, **secure},
                federation=federation or {})


class _Spy(InProcessGrid):
    """Records every message the server receives, to check what it could read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[Message] = []

    def pull_messages(self, message_ids):
        out = list(super().pull_messages(message_ids))
        self.received.extend(out)
        return out


@pytest.mark.parametrize("role", ["authority", "shared"])
def test_ckks_aggregate_equals_plaintext_and_the_server_cannot_decrypt(
        tiny_backbones, tmp_path, role, monkeypatch) -> None:
    bb = tiny_backbones["bert"]
    plain = _cfg(bb, tmp_path / "p")
    _run(plain, tmp_path / "p")
    expected = _final(plain)

    strategies: list[HomomorphicAggregation] = []
    original = HomomorphicAggregation.__init__

    def keep(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        strategies.append(self)

    monkeypatch.setattr(HomomorphicAggregation, "__init__", keep)
    cfg = _ckks(bb, tmp_path / "c", role)
    run_config = {"config-file": "", "run-dir": str(tmp_path / "c"), **to_flat(cfg)}
    grid = _Spy(client_module.app, N, run_config)
    summary = run_server(grid, run_config)
    assert summary["status"] == "completed" and summary["ckks_key_role"] == role
    _close(_final(cfg), expected, atol=1e-6)

    (strategy,) = strategies
    assert not strategy._server_ctx.has_secret_key() and strategy._server_ctx.is_public()
    # nothing the server received deserialises to a context holding the secret key
    for msg in grid.received:
        if msg.has_error():
            continue
        record = msg.content.config_records.get(PROTOCOL_RECORD, {})
        for value in record.values():
            if isinstance(value, bytes) and len(value) > 1000:
                try:
                    ctx = ts.context_from(value)
                except Exception:  # ciphertexts, wrapped keys: not a context
                    continue
                assert not ctx.has_secret_key()
    (row,) = read_metrics(tmp_path / "c" / "metrics.jsonl")[1:]
    assert row["secure"]["ckks_terms"] == N and row["secure"]["ckks_context_bytes_sent"] > 0
    assert row["bytes_up_per_client"] > 0


@pytest.mark.parametrize(("role", "completes"), [("authority", False), ("shared", True)])
def test_decryption_when_the_authority_is_gone(tiny_backbones, tmp_path, role,
                                              completes) -> None:
    """The authority vanishes at decryption: under ``shared`` another key holder
    decrypts; under ``authority`` nobody can, and the run stops with a clear error."""
    cfg = _ckks(tiny_backbones["bert"], tmp_path, role)

    def drop(m: Message) -> bool:
        return _stage_of(m) == "decrypt" and m.metadata.dst_node_id == 1000

    if completes:
        assert _run(cfg, tmp_path, drop=drop)["status"] == "completed"
    else:
        with pytest.raises(AggregationError, match="no CKKS key holder decrypted"):
            _run(cfg, tmp_path, drop=drop)


def test_a_malformed_ciphertext_is_dropped_and_the_rest_aggregated(tiny_backbones,
                                                                   tmp_path) -> None:
    from flwr.app import ConfigRecord, RecordDict
    from flwr.clientapp import ClientApp

    def corrupt(msg: Message, ctx: Context, call_next) -> Message:
        reply = call_next(msg, ctx)
        if ctx.node_config["partition-id"] == 2 and _stage_of(msg) == "setup":
            record = dict(reply.content.config_records[PROTOCOL_RECORD])
            record["ciphertext"] = record["ciphertext"][:-100]
            return Message(RecordDict({PROTOCOL_RECORD: ConfigRecord(record),
                                       **reply.content.metric_records}), reply_to=msg)
        return reply

    app = ClientApp(mods=[corrupt, *client_module.MODS])
    app.train()(client_module.handle_train)
    app.evaluate()(client_module.handle_evaluate)
    cfg = _ckks(tiny_backbones["bert"], tmp_path, federation={"min_replies": 3})
    assert _run(cfg, tmp_path, app=app)["status"] == "completed"
    (row,) = read_metrics(tmp_path / "metrics.jsonl")[1:]
    assert list(row["rejected"]) == ["1002"] and "malformed" in row["rejected"]["1002"]
    assert row["secure"]["ckks_terms"] == 3


def test_ckks_range_and_exactness_are_checked_before_anything_runs(tiny_backbones,
                                                                   tmp_path) -> None:
    bb = tiny_backbones["bert"]
    with pytest.raises(ConfigError, match="reaches max_abs_aggregate"):
        preflight(_ckks(bb, tmp_path, clipping_range=1e6))  # (60, 40): bound 2^19
    with pytest.raises(ConfigError, match="not exact under sum-only"):
        preflight(_cfg(bb, tmp_path, "lora", secure={"mode": "ckks"}))
    with pytest.raises(ConfigError, match=r"\[capture\] is not available"):
        preflight(_cfg(bb, tmp_path, secure={"mode": "ckks"},
                       capture={"round": 1, "client_index": 0}))
    with pytest.raises(ConfigError, match="key_role"):
        _ckks(bb, tmp_path, role="everyone")
