"""CKKS aggregation through the real ServerApp and ClientApp (mods), in-process grid,
and an adversarial server that talks to the nodes directly (issue 10, findings 3-4)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from securefed.app import client_app as client_module
from securefed.app.ckks_mod import KEY_STATE
from securefed.app.grid import InProcessGrid
from securefed.app.identify import register_identify
from securefed.app.launcher import preflight
from securefed.app.nodes import prepare_node_configs
from securefed.app.server_app import run_server
from securefed.config import ExperimentConfig, to_flat
from securefed.exceptions import AggregationError, ConfigError
from securefed.he import encrypt_vector, flooding_for
from securefed.report.recorder import read_metrics
from securefed.secagg.crypto import generate_keypair
from strategies.homomorphic import HomomorphicAggregation
from strategies.sum_only import PROTOCOL_RECORD
from tests.app.test_secagg_inprocess import NODE, N, _cfg, _close, _final, _stage_of

AUTHORITY = NODE  # partition 0, "node-0": the authority in generated node configs


def _ckks(backbone: Path, out: Path, role: str = "authority", *,
          federation: dict | None = None, rounds: int = 1, **secure: object) -> ExperimentConfig:
    return _cfg(backbone, out, rounds=rounds,
                secure={"mode": "ckks", "key_role": role, **secure},
                federation=federation or {})


class _Spy(InProcessGrid):
    """Records every message the server sends and receives."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def push_messages(self, messages):
        messages = list(messages)
        self.sent.extend(messages)
        return super().push_messages(messages)

    def pull_messages(self, message_ids):
        out = list(super().pull_messages(message_ids))
        self.received.extend(out)
        return out


def _grid(cfg: ExperimentConfig, out: Path, *, drop: Callable[[Message], bool] | None = None,
          app=None) -> tuple[_Spy, dict[str, Any]]:
    run_config: dict[str, Any] = {"config-file": "", "run-dir": str(out), **to_flat(cfg)}
    n = cfg.data.num_clients
    grid = _Spy(app or client_module.app, n, run_config, drop=drop,
                node_configs=prepare_node_configs(cfg, out),
                node_ids=[NODE + i for i in range(n)])  # drops name nodes by id
    return grid, run_config


def _run(cfg: ExperimentConfig, out: Path, **kw: Any) -> dict[str, Any]:
    grid, run_config = _grid(cfg, out, **kw)
    return run_server(grid, run_config)


@pytest.mark.parametrize("role", ["authority", "shared"])
def test_ckks_aggregate_equals_plaintext_and_the_server_cannot_decrypt(
        tiny_backbones, tmp_path, role, monkeypatch) -> None:
    bb = tiny_backbones["bert"]
    plain = _cfg(bb, tmp_path / "p")
    run_server(InProcessGrid(client_module.app, N, rc := {
        "config-file": "", "run-dir": str(tmp_path / "p"), **to_flat(plain)}), rc)
    expected = _final(plain)

    strategies: list[HomomorphicAggregation] = []
    original = HomomorphicAggregation.__init__

    def keep(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        strategies.append(self)

    monkeypatch.setattr(HomomorphicAggregation, "__init__", keep)
    cfg = _ckks(bb, tmp_path / "c", role)
    grid, run_config = _grid(cfg, tmp_path / "c")
    summary = run_server(grid, run_config)
    assert summary["status"] == "completed" and summary["ckks_key_role"] == role
    assert summary["ckks_flooding_bits"] == 40
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
    sec = row["secure"]
    assert sec["ckks_terms"] == N and sec["ckks_context_bytes_sent"] > 0
    assert 0 < sec["ckks_flooding_sigma"] < sec["ckks_error_bound"] < 1e-9
    assert row["bytes_up_per_client"] > 0


def test_keys_rotate_every_r_rounds(tiny_backbones, tmp_path) -> None:
    cfg = _ckks(tiny_backbones["bert"], tmp_path, rounds=3, ckks_key_rotation_rounds=2)
    grid, run_config = _grid(cfg, tmp_path)
    assert run_server(grid, run_config)["status"] == "completed"
    rows = read_metrics(tmp_path / "metrics.jsonl")[1:]
    assert [r["secure"]["ckks_key_epoch"] for r in rows] == [1, 1, 2]
    keygens = [m for m in grid.sent if _stage_of(m) == "keygen"]
    assert len(keygens) == 2
    # the authority holds only the epoch-2 key: epoch 1's secret context is gone
    state = grid.contexts[AUTHORITY].state.config_records[KEY_STATE]
    assert state["epoch"] == 2 and state["decryptions"] == 1


@pytest.mark.parametrize("role", ["authority", "shared"])
def test_only_the_authority_decrypts(tiny_backbones, tmp_path, role) -> None:
    """The authority vanishes at decryption: under either role nobody else decrypts
    (under ``shared`` two holders could be asked for two different sums of one round),
    and the run stops with a clear error."""
    cfg = _ckks(tiny_backbones["bert"], tmp_path, role)

    def drop(m: Message) -> bool:
        return _stage_of(m) == "decrypt" and m.metadata.dst_node_id == AUTHORITY

    with pytest.raises(AggregationError, match="did not decrypt"):
        _run(cfg, tmp_path, drop=drop)


def test_a_malformed_ciphertext_is_dropped_and_the_rest_aggregated(tiny_backbones,
                                                                   tmp_path) -> None:
    from flwr.clientapp import ClientApp

    def corrupt(msg: Message, ctx: Context, call_next) -> Message:
        reply = call_next(msg, ctx)
        if ctx.node_config["partition-id"] == 2 and _stage_of(msg) == "setup":
            record = dict(reply.content.config_records[PROTOCOL_RECORD])
            record["ciphertext"] = record["ciphertext"][:-100]
            return Message(RecordDict({PROTOCOL_RECORD: ConfigRecord(record),
                                       **reply.content.metric_records}), reply_to=msg)
        return reply

    app = register_identify(ClientApp(mods=[corrupt, *client_module.MODS]))
    app.train()(client_module.handle_train)
    app.evaluate()(client_module.handle_evaluate)
    cfg = _ckks(tiny_backbones["bert"], tmp_path, federation={"min_replies": 3})
    assert _run(cfg, tmp_path, app=app)["status"] == "completed"
    (row,) = read_metrics(tmp_path / "metrics.jsonl")[1:]
    (rejected,) = row["rejected"]
    assert rejected["partition_id"] == 2 and "malformed" in rejected["reason"]
    assert row["secure"]["ckks_terms"] == 3


def test_ckks_range_and_exactness_are_checked_before_anything_runs(tiny_backbones,
                                                                   tmp_path) -> None:
    bb = tiny_backbones["bert"]
    with pytest.raises(ConfigError, match="reaches max_abs_aggregate"):
        preflight(_ckks(bb, tmp_path, clipping_range=1e6))  # default bound 2^15
    with pytest.raises(ConfigError, match="not exact under sum-only"):
        preflight(_cfg(bb, tmp_path, "lora", secure={"mode": "ckks"}))
    with pytest.raises(ConfigError, match=r"\[capture\] is not available"):
        preflight(_cfg(bb, tmp_path, secure={"mode": "ckks"},
                       capture={"round": 1, "client_index": 0}))
    with pytest.raises(ConfigError, match="key_role"):
        _ckks(bb, tmp_path, role="everyone")
    with pytest.raises(ConfigError, match="ckks_flooding_bits"):
        _ckks(bb, tmp_path, ckks_flooding_bits=32)


def test_without_its_own_config_a_node_refuses_ckks(tiny_backbones, tmp_path) -> None:
    cfg = _ckks(tiny_backbones["bert"], tmp_path)
    run_config = {"config-file": "", "run-dir": str(tmp_path), **to_flat(cfg)}
    grid = InProcessGrid(client_module.app, N, run_config)  # no node configs
    with pytest.raises(AggregationError, match="own config"):
        run_server(grid, run_config)


# --------------------------------------------------------------- adversarial server
class _Attacker:
    """A server that deviates: it sends the nodes whatever it likes through the grid."""

    def __init__(self, grid: _Spy) -> None:
        self.grid = grid

    def send(self, node: int, stage: str, **fields: Any) -> Message:
        content = RecordDict({PROTOCOL_RECORD: ConfigRecord(
            {"protocol": "ckks", "stage": stage, **fields})})
        msg = Message(content, node, MessageType.TRAIN, group_id="attack")
        (reply,) = self.grid.send_and_receive([msg])
        return reply

    def last(self, stage: str) -> ConfigRecord:
        msgs = [m for m in self.grid.sent if _stage_of(m) == stage]
        return msgs[-1].content.config_records[PROTOCOL_RECORD]


def _refused(reply: Message, error: str) -> None:
    """A typed refusal, and no content at all (no context, no key, no value)."""
    assert reply.has_error() and not reply.has_content()
    assert reply.error.reason.startswith(error), reply.error.reason


@pytest.fixture
def honest(tiny_backbones, tmp_path) -> tuple[_Attacker, ExperimentConfig]:
    """One honest round; then the server turns against the nodes."""
    cfg = _ckks(tiny_backbones["bert"], tmp_path)
    grid, run_config = _grid(cfg, tmp_path)
    assert run_server(grid, run_config)["status"] == "completed"
    return _Attacker(grid), cfg


def _params(**extra: Any) -> dict[str, Any]:
    return {"poly-modulus-degree": 8192, "coeff-bits": [60, 40, 60], "scale-bits": 84,
            **extra}


def test_attack_ask_the_authority_for_shared_with_the_servers_transport_key(honest) -> None:
    attacker, _ = honest
    own = generate_keypair()
    reply = attacker.send(AUTHORITY, "keygen", **_params(
        **{"key-role": "shared", "nodes": [1], "names": ["node-1"],
           "transport-keys": [own.public_bytes], "signatures": [b"\0" * 64]}))
    _refused(reply, "PrivacyError: the server asked for key role 'shared'")


def test_attack_shared_authority_wraps_only_for_signed_member_keys(tiny_backbones,
                                                                   tmp_path) -> None:
    cfg = _ckks(tiny_backbones["bert"], tmp_path, "shared")
    grid, run_config = _grid(cfg, tmp_path)
    assert run_server(grid, run_config)["status"] == "completed"
    attacker = _Attacker(grid)
    own = generate_keypair()
    enrolled = attacker.last("keygen")
    for names, sigs in ((["node-1"], [b"\0" * 64]),                   # forged
                        (["server"], [b"\0" * 64]),                   # not a member
                        (["node-1"], [next(iter(enrolled["signatures"]))])):  # another key's
        reply = attacker.send(AUTHORITY, "keygen", **_params(
            **{"key-role": "shared", "nodes": [1], "names": names,
               "transport-keys": [own.public_bytes], "signatures": sigs}))
        _refused(reply, "SignatureError")


def _contributions(attacker: _Attacker) -> tuple[list, list, list]:
    """The signed contributions of the honest round, as the server holds them."""
    replies = [m for m in attacker.grid.received if not m.has_error()
               and "ciphertext" in m.content.config_records.get(PROTOCOL_RECORD, {})]
    records = [m.content.config_records[PROTOCOL_RECORD] for m in replies]
    return ([r["name"] for r in records], [r["ciphertext"] for r in records],
            [r["signature"] for r in records])


def test_attack_decrypt_one_clients_update(honest) -> None:
    """Whatever count, floor and bound the server writes, one ciphertext is refused."""
    attacker, _ = honest
    names, cts, sigs = _contributions(attacker)
    length = attacker.last("decrypt")["length"]
    for extra in ({}, {"min-terms": 1, "max-abs": 1e30, "terms": 4}):
        reply = attacker.send(AUTHORITY, "decrypt", **{
            "round-id": 2, "length": length, "names": names[:1], "ciphertexts": cts[:1],
            "signatures": sigs[:1], **extra})
        _refused(reply, "PrivacyError: 1 signed contribution(s), fewer than")


def test_attack_add_a_server_made_zero_or_pad_with_copies(honest) -> None:
    attacker, _ = honest
    names, cts, sigs = _contributions(attacker)
    length = attacker.last("decrypt")["length"]
    public = attacker.last("setup").get("public-context")
    zero = encrypt_vector(public, np.zeros(length)) if public else cts[1]
    cases = [
        (["node-9", names[0], names[1], names[2]], [zero, *cts[:3]], [b"\0" * 64, *sigs[:3]],
         "SignatureError"),                                    # Enc(0) as a made-up member
        ([names[0], names[1]] * 2, cts[:2] * 2, sigs[:2] * 2, "PrivacyError"),  # copies
        (names[:4], [zero, *cts[1:4]], sigs[:4], "SignatureError"),  # swapped for Enc(0)
    ]
    for n, c, s, error in cases:
        _refused(attacker.send(AUTHORITY, "decrypt", **{
            "round-id": 2, "length": length, "names": n, "ciphertexts": c,
            "signatures": s}), error)


def test_attack_replay_round_one_in_round_two(honest) -> None:
    attacker, _ = honest
    names, cts, sigs = _contributions(attacker)
    length = attacker.last("decrypt")["length"]
    for round_id, error in ((1, "PrivacyError: round 1 is not later"),
                            (2, "SignatureError")):
        _refused(attacker.send(AUTHORITY, "decrypt", **{
            "round-id": round_id, "length": length, "names": names, "ciphertexts": cts,
            "signatures": sigs}), error)


def test_attack_ask_a_non_authority_to_decrypt_or_make_keys(honest) -> None:
    attacker, _ = honest
    names, cts, sigs = _contributions(attacker)
    for stage, fields in (("decrypt", {"round-id": 2, "length": 1, "names": names,
                                       "ciphertexts": cts, "signatures": sigs}),
                          ("keygen", _params(**{"key-role": "authority"}))):
        _refused(attacker.send(1001, stage, **fields), "PrivacyError: node 'node-1' is not")


def test_attack_substitute_the_public_context(honest) -> None:
    """A server-made key pair: clients refuse to encrypt under it (not the authority's
    signature), so the server's secret key never opens a client's update."""
    from securefed.he import CKKSConfig, context_fingerprint, generate_keys

    attacker, _ = honest
    mine = generate_keys(CKKSConfig())
    setup = dict(attacker.last("setup"))
    setup.update({"round-id": 5, "public-context": mine.public_context, "epoch": 9,
                  "public-signature": b"\0" * 64, "transport-public": b"",
                  "context-sha256": context_fingerprint(mine.public_context)})
    setup.pop("protocol"), setup.pop("stage")
    train = [m for m in attacker.grid.sent if _stage_of(m) == "setup"][-1]
    content = RecordDict({**train.content, PROTOCOL_RECORD: ConfigRecord(
        {"protocol": "ckks", "stage": "setup", **setup})})
    content.config_records["config"]["server-round"] = 5
    msg = Message(content, 1001, MessageType.TRAIN, group_id="attack")
    (reply,) = attacker.grid.send_and_receive([msg])
    _refused(reply, "SignatureError")


def test_honest_flooding_bound_at_the_run_parameters() -> None:
    """The bound the metrics report for the run above (4 clients) is the module's."""
    from securefed.he import CKKSConfig

    f = flooding_for(CKKSConfig(), terms=N, values=100, rotation_rounds=10)
    assert f.error_bound < 1e-11
