"""The client side of CKKS aggregation as a Flower mod (Cheon et al. 2017, via TenSEAL).

``ckks_mod`` answers the ``"secure"`` records with ``protocol = "ckks"`` sent by
:class:`strategies.homomorphic.HomomorphicAggregation` and passes everything else on.
What a node accepts comes from its **own** node config (:func:`securefed.app.nodes.node_config_of`):
its roster identity and the :class:`~securefed.he.AuthorityPolicy`; the server only
relays (``docs/threat-model.md``)::

    enroll    name, whether this node is the authority, and ("shared" in this node's
              policy) a fresh X25519 transport key signed with its roster identity
    keygen    (the authority named in its own policy only) refuse a key role other than
              its own; fresh keys (the previous secret context is dropped); sign the
              public context; ("shared") wrap the secret key only for transport keys
              that roster members signed
    setup     accept a public context only with the configured authority's signature;
              train (call_next) -> update -> encrypt -> sign (run, key, round, name,
              SHA-256 of the ciphertext); at most one contribution per round and key
    decrypt   (the authority only) :func:`securefed.he.decrypt_contributions`: verify
              >= min_terms distinct members' signatures, add them itself, decrypt once
              per round, flood, and count the key's use (rotation)

Secrets (the CKKS secret context, the X25519 transport key) live only in this node's
``context.state``. Mod order as for ``secagg_mod``: mods after it run inside it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from securefed.app.nodes import node_config_of
from securefed.app.protocol_mod import (
    CallNext,
    StageHandler,
    client_update,
    dispatch,
    secure_stats_of,
)
from securefed.exceptions import ConfigError, PrivacyError
from securefed.he import (
    AuthorityPolicy,
    CKKSConfig,
    Contribution,
    KeyState,
    context_fingerprint,
    decrypt_contributions,
    encrypt_vector,
    generate_keys,
    sign_contribution,
    verify_enrolment,
)
from securefed.he.signed import ENROLL, PUBLIC_CONTEXT
from securefed.roster import Identity, Roster, identity_from_node_config
from securefed.secagg.crypto import (
    KEY_TRANSPORT_LABEL,
    decrypt_bundle,
    derive_shared_key,
    encrypt_bundle,
    generate_keypair,
)
from securefed.secagg.errors import ProtocolError
from strategies.sum_only import PROTOCOL_RECORD

__all__ = ["KEY_STATE", "STATE_KEY", "ckks_mod"]

log = logging.getLogger(__name__)

STATE_KEY = "securefed.ckks"
KEY_STATE = "securefed.ckks.key"
ERROR_CODE = 3702
_WRAP_STAGE = "ckks-key-transport"


def _state(context: Context, name: str = STATE_KEY) -> dict[str, Any]:
    record = context.state.config_records.get(name)
    return {} if record is None else dict(record)


def _save(context: Context, **fields: Any) -> None:
    state = _state(context)
    state.update(fields)
    context.state.config_records[STATE_KEY] = ConfigRecord(state)


def _reply(msg: Message, fields: dict[str, Any],
           metrics: MetricRecord | None = None) -> Message:
    content = RecordDict({PROTOCOL_RECORD: ConfigRecord(fields)})
    if metrics is not None:
        content["metrics"] = metrics
    return Message(content, reply_to=msg)


def _field(record: ConfigRecord, key: str, kind: type) -> Any:
    value = record.get(key)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ProtocolError(f"CKKS message field {key!r} is missing or not {kind.__name__}")
    return value


def _own(context: Context) -> tuple[Identity, Roster, AuthorityPolicy]:
    """This node's identity, roster and CKKS policy, from its own node config only."""
    node_config = node_config_of(context)
    policy = AuthorityPolicy.from_node_config(node_config)
    found = identity_from_node_config(node_config)
    if found is None:
        raise ConfigError("CKKS needs this node's roster identity in its node config "
                          "(securefed-roster, securefed-identity, securefed-name)")
    identity, roster = found
    if policy.authority not in roster:
        raise ConfigError(f"the configured CKKS authority {policy.authority!r} is not in "
                          f"the roster; members: {list(roster.names)}")
    return identity, roster, policy


def _require_authority(identity: Identity, policy: AuthorityPolicy, stage: str) -> None:
    if identity.name != policy.authority:
        raise PrivacyError(f"node {identity.name!r} is not the CKKS key authority "
                           f"({policy.authority!r} in its own config); refusing {stage}")


def _enroll(msg: Message, context: Context, call_next: CallNext) -> Message:
    identity, _, policy = _own(context)
    fields: dict[str, Any] = {"name": identity.name,
                              "authority": identity.name == policy.authority}
    if policy.key_role == "shared":
        pair = generate_keypair()
        _save(context, **{"transport-private": pair.private_key.private_bytes_raw()})
        fields.update({"transport-public": pair.public_bytes,
                       "signature": identity.sign(ENROLL, context.run_id, identity.name,
                                                  pair.public_bytes)})
    return _reply(msg, fields)


def _keygen(msg: Message, context: Context, call_next: CallNext) -> Message:
    identity, roster, policy = _own(context)
    _require_authority(identity, policy, "key generation")
    record = msg.content.config_records[PROTOCOL_RECORD]
    asked = _field(record, "key-role", str)
    if asked != policy.key_role:
        raise PrivacyError(f"the server asked for key role {asked!r}; this authority's own "
                           f"config says {policy.key_role!r}")
    config = CKKSConfig(poly_modulus_degree=_field(record, "poly-modulus-degree", int),
                        coeff_mod_bit_sizes=tuple(_field(record, "coeff-bits", list)),
                        global_scale_bits=_field(record, "scale-bits", int),
                        key_role=policy.key_role)
    enrolled: list[tuple[int, str, bytes, bytes]] = []
    if config.role.clients_hold_secret_key:
        nodes, names = _field(record, "nodes", list), _field(record, "names", list)
        keys, sigs = _field(record, "transport-keys", list), _field(record, "signatures", list)
        if not len(nodes) == len(names) == len(keys) == len(sigs):
            raise ProtocolError("enrolment lists of different lengths")
        enrolled = list(zip(nodes, names, keys, sigs, strict=True))
        verify_enrolment(roster, [(n, k, s) for _, n, k, s in enrolled], run_id=context.run_id)
    previous = _state(context, KEY_STATE)
    epoch = int(previous.get("epoch", 0)) + 1
    # Rotation: the previous secret context is replaced, never kept (Python cannot wipe
    # the old bytes from memory; they are no longer referenced).
    context.state.config_records.pop(KEY_STATE, None)
    keys_ = generate_keys(config)
    fp = context_fingerprint(keys_.public_context)
    state = KeyState(epoch=epoch, config=config, secret_context=keys_.secret_context,
                     fingerprint=fp, last_round=int(previous.get("last-round", 0)))
    context.state.config_records[KEY_STATE] = ConfigRecord(state.to_fields())
    fields: dict[str, Any] = {"public-context": keys_.public_context, "epoch": epoch}
    transport = b""
    if enrolled:
        pair = generate_keypair()
        transport = pair.public_bytes
        me = int(msg.metadata.dst_node_id)
        wrapped = []
        for node, _, peer, _ in enrolled:
            key = derive_shared_key(pair.private_key, peer, KEY_TRANSPORT_LABEL)
            wrapped.append(encrypt_bundle(key, keys_.secret_context, sender=me,
                                          receiver=int(node), round_id=epoch,
                                          stage=_WRAP_STAGE))
        fields.update({"wrapped-for": [int(n) for n, _, _, _ in enrolled],
                       "wrapped": wrapped})
    fields.update({"transport-public": transport,
                   "signature": identity.sign(PUBLIC_CONTEXT, context.run_id, epoch, fp,
                                              policy.key_role, transport)})
    log.info("CKKS authority %s: key epoch %d (%s)", identity.name, epoch, policy.key_role)
    return _reply(msg, fields)


def _accept_context(record: ConfigRecord, context: Context, roster: Roster,
                    policy: AuthorityPolicy, me: int) -> None:
    """Store a public context signed by this node's configured authority (and, under
    ``shared``, this node's copy of the secret key)."""
    public = _field(record, "public-context", bytes)
    epoch = _field(record, "epoch", int)
    transport = _field(record, "transport-public", bytes)
    fp = context_fingerprint(public)
    roster.verify(policy.authority, record.get("public-signature"), PUBLIC_CONTEXT,
                  context.run_id, epoch, fp, policy.key_role, transport)
    _save(context, **{"public-context": public, "public-sha256": fp})
    if "wrapped-secret" not in record:
        return
    if policy.key_role != "shared":
        raise PrivacyError("received a wrapped CKKS secret key, but this node's config "
                           "says key role 'authority'")
    private = _state(context).get("transport-private")
    if not isinstance(private, bytes):
        raise ProtocolError("received a wrapped CKKS secret key but never enrolled")
    key = derive_shared_key(X25519PrivateKey.from_private_bytes(private), transport,
                            KEY_TRANSPORT_LABEL)
    secret = decrypt_bundle(key, _field(record, "wrapped-secret", bytes),
                            sender=_field(record, "authority", int), receiver=me,
                            round_id=epoch, stage=_WRAP_STAGE)
    _save(context, **{"secret-context": secret})


def _setup(msg: Message, context: Context, call_next: CallNext) -> Message:
    identity, roster, policy = _own(context)
    record = msg.content.config_records[PROTOCOL_RECORD]
    sha = _field(record, "context-sha256", str)
    if "public-context" in record:
        _accept_context(record, context, roster, policy, int(msg.metadata.dst_node_id))
    state = _state(context)
    public = state.get("public-context")
    if not isinstance(public, bytes) or state.get("public-sha256") != sha:
        raise ProtocolError(f"this node holds no CKKS public context {sha[:12]}; the server "
                            "resends it next round")
    server_round = _field(record, "round-id", int)
    last = int(state.get("last-round", 0))  # type: ignore[arg-type]
    if server_round <= last:
        raise PrivacyError(f"round {server_round} is not later than round {last}, which "
                           "this node already contributed to in this run")
    train = msg.content.config_records.get("config")
    if train is None or train.get("server-round") != server_round:
        raise PrivacyError(f"the train config's server-round differs from the CKKS round "
                           f"{server_round}: a node trains each round once")
    clipping_range = float(_field(record, "clipping-range", float))
    max_weight = _field(record, "max-weight", int)
    on_overflow = _field(record, "on-overflow", str)
    vector_length = _field(record, "vector-length", int)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    update = client_update(msg, reply, clipping_range=clipping_range, on_overflow=on_overflow,
                           max_weight=max_weight, vector_length=vector_length,
                           stats=secure_stats_of(context))
    ciphertext = encrypt_vector(public, np.append(update.scaled, update.scale))
    signed = sign_contribution(identity, ciphertext, run_id=context.run_id, key=sha,
                               server_round=server_round)
    _save(context, **{"last-round": server_round})
    return _reply(msg, {"ciphertext": ciphertext, "name": signed.name,
                        "signature": signed.signature}, update.metrics)


def _decrypt(msg: Message, context: Context, call_next: CallNext) -> Message:
    identity, roster, policy = _own(context)
    _require_authority(identity, policy, "decryption")
    record = msg.content.config_records[PROTOCOL_RECORD]
    saved = context.state.config_records.get(KEY_STATE)
    if saved is None:
        raise PrivacyError("this node holds no CKKS secret key and cannot decrypt")
    key = KeyState.from_fields(dict(saved))
    names = _field(record, "names", list)
    cts, sigs = _field(record, "ciphertexts", list), _field(record, "signatures", list)
    if not len(names) == len(cts) == len(sigs):
        raise ProtocolError("decrypt lists of different lengths")
    contributions = [Contribution(str(n), c, s) for n, c, s in zip(names, cts, sigs,
                                                                  strict=True)]
    try:
        values, flooding = decrypt_contributions(
            key, policy, roster, contributions, run_id=context.run_id,
            server_round=_field(record, "round-id", int), length=_field(record, "length", int))
    finally:  # a spent round stays spent, refused or not
        context.state.config_records[KEY_STATE] = ConfigRecord(key.to_fields())
    return _reply(msg, {"sum": np.ascontiguousarray(values, dtype="<f8").tobytes(),
                        "flooding-sigma": flooding.sigma,
                        "error-bound": flooding.error_bound,
                        "terms": len(contributions)})


STAGES: dict[str, StageHandler] = {
    "enroll": _enroll, "keygen": _keygen, "setup": _setup, "decrypt": _decrypt,
}
"""Client handler of each CKKS stage, by the wire name the server sends."""


def ckks_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
    """Flower mod: this node's part of CKKS aggregation; other messages pass through."""
    return dispatch(msg, context, call_next, protocol="ckks", stages=STAGES,
                    error_code=ERROR_CODE)
