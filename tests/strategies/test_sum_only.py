"""Sum-only wrappers: exactness rule, construction checks, state, and the client mods'
refusals (unit level; the full protocol runs in tests/app)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from securefed.app.ckks_mod import ckks_mod
from securefed.app.secagg_mod import secagg_mod
from securefed.exceptions import ConfigError
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.homomorphic import HomomorphicAggregation
from strategies.secure_aggregation import SecureAggregation
from strategies.sum_only import PROTOCOL_RECORD, check_exactness


def _inner() -> AdapterFedAvg:
    return AdapterFedAvg(clients_per_round=4, min_replies=3, rng=np.random.default_rng(0))


def test_exactness_rule() -> None:
    assert check_exactness("ffa-lora", True, False, "w") == "exact"
    assert check_exactness("lora", False, True, "w") == "inexact-allowed"
    with pytest.raises(ConfigError, match=r"'lora' is not exact.*dense.*allow_inexact"):
        check_exactness("lora", False, False, "w")


def test_wrappers_refuse_bad_parameters_when_built() -> None:
    with pytest.raises(ConfigError, match="not exact"):
        SecureAggregation(_inner(), method="federa", exact_under_sum=False,
                          clipping_range=1.0)
    with pytest.raises(ConfigError, match="overflow"):
        SecureAggregation(_inner(), method="bitfit", exact_under_sum=True,
                          clipping_range=1.0, bits=16, max_weight=2**16)
    with pytest.raises(ConfigError, match="stage_timeout"):
        SecureAggregation(_inner(), method="bitfit", exact_under_sum=True,
                          clipping_range=1.0, stage_timeout=0)
    with pytest.raises(ConfigError, match="max_abs_aggregate"):
        HomomorphicAggregation(_inner(), method="bitfit", exact_under_sum=True,
                               clipping_range=20_000.0)  # 2 x 2e4 > 2^15 at scale 2^84
    with pytest.raises(ConfigError, match="unknown CKKS key role 'everyone'"):
        HomomorphicAggregation(_inner(), method="bitfit", exact_under_sum=True,
                               clipping_range=1.0, key_role="everyone")
    with pytest.raises(ConfigError, match="key_rotation_rounds"):
        HomomorphicAggregation(_inner(), method="bitfit", exact_under_sum=True,
                               clipping_range=1.0, key_rotation_rounds=0)


def test_wrapper_state_round_trips_through_json() -> None:
    strategy = HomomorphicAggregation(_inner(), method="bitfit", exact_under_sum=True,
                                      clipping_range=1.0)
    strategy.authority, strategy._delivered = 17, {17, 18}
    state = json.loads(json.dumps(strategy.state_dict()))
    again = HomomorphicAggregation(_inner(), method="bitfit", exact_under_sum=True,
                                   clipping_range=1.0)
    again.load_state_dict(state)
    assert again.authority == 17 and again._delivered == {17, 18}
    secagg = SecureAggregation(_inner(), method="bitfit", exact_under_sum=True,
                               clipping_range=1.0)
    with pytest.raises(ConfigError, match="cannot be loaded"):
        secagg.load_state_dict(state)
    with pytest.raises(ConfigError, match="malformed"):
        secagg.load_state_dict({"wrapper": "SecureAggregation"})


def _message(stage: str, protocol: str, **fields: object) -> Message:
    if TaskIdentity._run_id is None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 0
    record = ConfigRecord({"protocol": protocol, "stage": stage, **fields})
    return Message(RecordDict({PROTOCOL_RECORD: record}), dst_node_id=5, message_type="train")


def _context() -> Context:
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})


def _never(msg: Message, ctx: Context) -> Message:
    raise AssertionError("the handler must not run for a protocol-only stage")


@pytest.mark.parametrize(("mod", "protocol", "stage", "match"), [
    (secagg_mod, "secagg+", "teleport", "unknown secagg\\+ stage"),
    (secagg_mod, "secagg+", "share-keys", "no SecAgg\\+ round in progress"),
    (secagg_mod, "secagg+", "unmask", "no SecAgg\\+ round in progress"),
    (ckks_mod, "ckks", "teleport", "unknown ckks stage"),
    # no securefed-ckks-* keys in the node's own config: every CKKS stage is refused
    (ckks_mod, "ckks", "decrypt", "CKKS needs this node's own config"),
    (ckks_mod, "ckks", "setup", "CKKS needs this node's own config"),
])
def test_mods_answer_bad_stages_with_an_error_reply(mod, protocol, stage, match) -> None:
    reply = mod(_message(stage, protocol, **{"round-id": 1}), _context(), _never)
    assert reply.has_error()
    assert __import__("re").search(match, reply.error.reason), reply.error.reason


def test_mods_pass_other_messages_through() -> None:
    seen = []

    def handler(msg: Message, ctx: Context) -> Message:
        seen.append(msg)
        return Message(RecordDict(), reply_to=msg)

    msg = _message("setup", "something-else")
    for mod in (secagg_mod, ckks_mod):
        assert not mod(msg, _context(), handler).has_error()
    assert len(seen) == 2
