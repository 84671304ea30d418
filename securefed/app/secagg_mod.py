"""The client side of SecAgg+ as a Flower mod (Bell et al. 2020, arXiv:2009.05807).

``secagg_mod`` handles the training messages that carry the ``"secure"`` ConfigRecord
of :class:`strategies.secure_aggregation.SecureAggregation` and passes every other
message through unchanged, so it can sit on the ClientApp permanently::

    setup         SecAgg+ config -> AdvertiseKeys      (malicious: signed)
    share-keys    KeysBroadcast  -> ShareKeys
    masked-input  train message + ShareBundle -> call_next (train) -> update x - g,
                  checked against [-c, c], scaled by w / max_weight, quantised and
                  masked -> MaskedInput + metrics   (the only payload that leaves)
    consistency   ConsistencyRequest -> ConsistencySignature   (malicious only)
    unmask        UnmaskRequest  -> UnmaskResponse     (state cleared)

Adversary mode: a node with a roster (:func:`securefed.app.nodes.node_config_of`:
its node config, or a simulated run's roster) takes part **only** in malicious-mode
rounds; a server cannot downgrade it to semi-honest. A node without a roster refuses a
malicious-mode round. Every setup is checked against the node's floors
(:class:`~securefed.secagg.floors.SecAggFloors` from its node config), and a node never
takes part twice in one round, or in a round older than its last one.

Between stages the client's secrets (private keys, self-mask seed, received shares)
live only in ``context.state``, which the SuperNode keeps in its own memory; the
plaintext metrics lose ``num-examples`` (the weight travels masked).

Mod order: mods listed after this one in ``ClientApp(mods=[...])`` run *inside* it, so
a clipping mod placed after ``secagg_mod`` clips the update before it is masked (see
``docs/architecture.md``). Any failure becomes an error reply naming the cause; the
server then treats the client as dropped.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from securefed.app.nodes import node_config_of
from securefed.app.protocol_mod import (
    CallNext,
    StageHandler,
    client_update,
    dispatch,
    secure_stats_of,
)
from securefed.exceptions import ConfigError
from securefed.roster import identity_from_node_config
from securefed.secagg import SecAggClient, SecAggConfig
from securefed.secagg.auth import Authenticator
from securefed.secagg.errors import FloorError, ProtocolError
from securefed.secagg.floors import SecAggFloors
from securefed.secagg.serial import (
    config_from_dict,
    config_to_dict,
    decode_message,
    encode_message,
)
from strategies.sum_only import PROTOCOL_RECORD

__all__ = ["ADVERSARIES", "MALICIOUS", "SEMI_HONEST", "STATE_KEY", "secagg_mod"]

log = logging.getLogger(__name__)

STATE_KEY = "securefed.secagg"
ROUNDS_KEY = "securefed.secagg.rounds"  # the last round this node took part in
ERROR_CODE = 3701  # application-defined Error code of a refused SecAgg+ step
SEMI_HONEST = "semi-honest"
MALICIOUS = "malicious"
ADVERSARIES = (SEMI_HONEST, MALICIOUS)
"""Wire values of the setup's ``adversary`` field."""



def _secure_rng() -> np.random.Generator:
    """Quantisation randomness seeded from the OS CSPRNG (never from the experiment seed)."""
    return np.random.default_rng(secrets.randbits(128))


def _state(context: Context) -> ConfigRecord:
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        raise ProtocolError("no SecAgg+ round in progress on this client (setup not received)")
    return record


def _auth(context: Context) -> Authenticator | None:
    """This node's authenticator for the run, from its own config (never the server)."""
    found = identity_from_node_config(node_config_of(context))
    if found is None:
        return None
    identity, roster = found
    return Authenticator(identity, roster, str(context.run_id))


def _client(context: Context, round_id: Any) -> tuple[SecAggClient, SecAggConfig]:
    state = _state(context)
    config = config_from_dict(_config_fields(state))
    if round_id != config.round_id:
        raise ProtocolError(f"stage message for round {round_id!r}; this client is in "
                            f"round {config.round_id}")
    auth = _auth(context) if state.get("adversary") == MALICIOUS else None
    client = SecAggClient.from_state_dict(dict(state), config, _secure_rng(), auth=auth)
    return client, config


def _config_fields(state: ConfigRecord) -> dict[str, Any]:
    return {k[len("config."):]: v for k, v in state.items() if k.startswith("config.")}


def _save(context: Context, client: SecAggClient, config: SecAggConfig) -> None:
    record: dict[str, Any] = dict(client.state_dict())
    record.update({f"config.{k}": v for k, v in config_to_dict(config).items()})
    record["adversary"] = MALICIOUS if client.malicious else SEMI_HONEST
    context.state.config_records[STATE_KEY] = ConfigRecord(record)


def _reply(msg: Message, message: object, metrics: MetricRecord | None = None) -> Message:
    content = RecordDict({PROTOCOL_RECORD: ConfigRecord(dict(encode_message(message)))})
    if metrics is not None:
        content["metrics"] = metrics
    return Message(content, reply_to=msg)


def _setup(msg: Message, context: Context, call_next: CallNext) -> Message:
    record = msg.content.config_records[PROTOCOL_RECORD]
    config = config_from_dict(record)
    client_id = record.get("client-id")
    if isinstance(client_id, bool) or not isinstance(client_id, int):
        raise ProtocolError(f"setup lacks an int 'client-id', got {client_id!r}")
    adversary = record.get("adversary", SEMI_HONEST)
    if adversary not in ADVERSARIES:
        raise ProtocolError(f"unknown adversary mode {adversary!r}; known: {ADVERSARIES}")
    auth = _auth(context)
    if auth is not None and adversary != MALICIOUS:
        raise FloorError("this node has a roster and takes part only in malicious-mode "
                         f"SecAgg+; the server asked for {adversary!r}")
    if auth is None and adversary == MALICIOUS:
        raise ConfigError("malicious-mode SecAgg+ needs this node's roster: start the "
                          "SuperNode with --node-config 'securefed-roster=... "
                          "securefed-identity=... securefed-name=...'")
    rounds = context.state.config_records.get(ROUNDS_KEY)
    last = rounds.get("last-round") if rounds is not None else None
    if isinstance(last, int) and config.round_id <= last:
        raise ProtocolError(f"setup for round {config.round_id}; this node already took "
                            f"part in round {last}")
    floors = SecAggFloors.from_node_config(node_config_of(context))
    client = SecAggClient(client_id, config, _secure_rng(), auth=auth, floors=floors)
    advertise = client.advertise_keys()
    context.state.config_records[ROUNDS_KEY] = ConfigRecord({"last-round": config.round_id})
    _save(context, client, config)
    return _reply(msg, advertise)


def _step(kind: str, method: Callable[[SecAggClient, Any], object]) -> StageHandler:
    """A key stage: decode the server's ``kind`` message, advance, save, reply."""

    def handle(msg: Message, context: Context, call_next: CallNext) -> Message:
        record = msg.content.config_records[PROTOCOL_RECORD]
        client, config = _client(context, record.get("round-id"))
        out = method(client, decode_message(record, kind))
        _save(context, client, config)
        return _reply(msg, out)

    return handle


def _masked_input(msg: Message, context: Context, call_next: CallNext) -> Message:
    """Train (``call_next``), then quantise and mask the weight-scaled update."""
    record = msg.content.config_records[PROTOCOL_RECORD]
    client, config = _client(context, record.get("round-id"))
    bundle = decode_message(record, "share-bundle")
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    q = config.quantization
    update = client_update(msg, reply, clipping_range=q.clipping_range,
                           on_overflow=q.on_overflow, max_weight=q.max_weight,
                           vector_length=config.vector_length,
                           stats=secure_stats_of(context))
    out = client.masked_input(bundle, update.scaled,
                              update.weight if config.has_weight else None)
    _save(context, client, config)
    return _reply(msg, out, update.metrics)


def _unmask(msg: Message, context: Context, call_next: CallNext) -> Message:
    record = msg.content.config_records[PROTOCOL_RECORD]
    client, _ = _client(context, record.get("round-id"))
    out = client.unmask(decode_message(record, "unmask-request"))
    context.state.config_records.pop(STATE_KEY, None)
    return _reply(msg, out)


STAGES: dict[str, StageHandler] = {
    "setup": _setup,
    "share-keys": _step("keys-broadcast", SecAggClient.share_keys),
    "masked-input": _masked_input,
    "consistency": _step("consistency-request", SecAggClient.consistency),
    "unmask": _unmask,
}
"""Client handler of each SecAgg+ stage, by the wire name the server sends."""


def _forget(stage: str, context: Context) -> None:
    if stage != "setup":
        context.state.config_records.pop(STATE_KEY, None)


def secagg_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
    """Flower mod: run this client's side of a SecAgg+ round; pass other messages on."""
    return dispatch(msg, context, call_next, protocol="secagg+", stages=STAGES,
                    error_code=ERROR_CODE, on_error=_forget)
