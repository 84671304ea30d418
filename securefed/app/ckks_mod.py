"""The client side of CKKS aggregation as a Flower mod (Cheon et al. 2017, via TenSEAL).

``ckks_mod`` answers the ``"secure"`` records with ``protocol = "ckks"`` sent by
:class:`strategies.homomorphic.HomomorphicAggregation` and passes everything else on::

    enroll    ("shared" only) a fresh X25519 key for receiving the wrapped secret key
    keygen    (authority node) create the CKKS keys; keep the secret context in
              context.state; return the public context [+ wrapped secret contexts]
    setup     train (call_next) -> update x - g in [-c, c] -> encrypt
              [w/W (x - g), w/W] under the public context -> ciphertext only
    decrypt   (key holder) decrypt an aggregate of at least ``min-terms`` vectors,
              refusing values beyond ``max-abs`` (tampered or wrapped ciphertexts)

Secrets (the CKKS secret context, the X25519 transport key) live only in this node's
``context.state``. Mod order as for ``secagg_mod``: mods after it run inside it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from securefed.app.protocol_mod import (
    CallNext,
    StageHandler,
    client_update,
    dispatch,
    secure_stats_of,
)
from securefed.exceptions import PrivacyError
from securefed.he import CKKSConfig, decrypt_sum, encrypt_vector, generate_keys, load_context
from securefed.secagg.crypto import (
    KEY_TRANSPORT_LABEL,
    decrypt_bundle,
    derive_shared_key,
    encrypt_bundle,
    generate_keypair,
)
from securefed.secagg.errors import ProtocolError
from strategies.homomorphic import fingerprint
from strategies.sum_only import PROTOCOL_RECORD

__all__ = ["STATE_KEY", "ckks_mod"]

log = logging.getLogger(__name__)

STATE_KEY = "securefed.ckks"
ERROR_CODE = 3702
_WRAP_STAGE = "ckks-key-transport"



def _state(context: Context) -> dict[str, Any]:
    record = context.state.config_records.get(STATE_KEY)
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


def _enroll(msg: Message, context: Context, call_next: CallNext) -> Message:
    pair = generate_keypair()
    _save(context, **{"transport-private": pair.private_key.private_bytes_raw()})
    return _reply(msg, {"transport-public": pair.public_bytes})


def _keygen(msg: Message, context: Context, call_next: CallNext) -> Message:
    record = msg.content.config_records[PROTOCOL_RECORD]
    config = CKKSConfig(poly_modulus_degree=_field(record, "poly-modulus-degree", int),
                        coeff_mod_bit_sizes=tuple(_field(record, "coeff-bits", list)),
                        global_scale_bits=_field(record, "scale-bits", int),
                        key_role=_field(record, "key-role", str))
    keys = generate_keys(config)
    me = int(msg.metadata.dst_node_id)
    _save(context, **{"secret-context": keys.secret_context,
                      "public-sha256": fingerprint(keys.public_context)})
    fields: dict[str, Any] = {"public-context": keys.public_context}
    if config.role.clients_hold_secret_key:
        nodes, peers = _field(record, "nodes", list), _field(record, "transport-keys", list)
        pair = generate_keypair()
        wrapped = []
        for node, peer in zip(nodes, peers, strict=True):
            key = derive_shared_key(pair.private_key, peer, KEY_TRANSPORT_LABEL)
            wrapped.append(encrypt_bundle(key, keys.secret_context, sender=me, receiver=node,
                                          round_id=0, stage=_WRAP_STAGE))
        fields.update({"wrapped-for": list(nodes), "wrapped": wrapped,
                       "transport-public": pair.public_bytes})
    return _reply(msg, fields)


def _unwrap_secret(record: ConfigRecord, context: Context, me: int) -> None:
    """Store this node's copy of the secret context (``shared`` key role)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = _state(context).get("transport-private")
    if not isinstance(private, bytes):
        raise ProtocolError("received a wrapped CKKS secret key but never enrolled")
    key = derive_shared_key(X25519PrivateKey.from_private_bytes(private),
                            _field(record, "transport-public", bytes), KEY_TRANSPORT_LABEL)
    secret = decrypt_bundle(key, _field(record, "wrapped-secret", bytes),
                            sender=_field(record, "authority", int), receiver=me,
                            round_id=0, stage=_WRAP_STAGE)
    _save(context, **{"secret-context": secret})


def _setup(msg: Message, context: Context, call_next: CallNext) -> Message:
    record = msg.content.config_records[PROTOCOL_RECORD]
    sha = _field(record, "context-sha256", str)
    if "public-context" in record:
        public = _field(record, "public-context", bytes)
        if fingerprint(public) != sha:
            raise ProtocolError("the public context does not match its SHA-256 fingerprint")
        _save(context, **{"public-context": public, "public-sha256": sha})
        if "wrapped-secret" in record:
            _unwrap_secret(record, context, int(msg.metadata.dst_node_id))
    state = _state(context)
    public = state.get("public-context")
    if not isinstance(public, bytes) or state.get("public-sha256") != sha:
        raise ProtocolError(f"this node holds no CKKS public context {sha[:12]}; the server "
                            "resends it next round")
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
    return _reply(msg, {"ciphertext": ciphertext}, update.metrics)


def _decrypt(msg: Message, context: Context, call_next: CallNext) -> Message:
    record = msg.content.config_records[PROTOCOL_RECORD]
    secret = _state(context).get("secret-context")
    if not isinstance(secret, bytes):
        raise PrivacyError("this node holds no CKKS secret key and cannot decrypt")
    min_terms = _field(record, "min-terms", int)
    if min_terms < 2:
        raise PrivacyError(f"refusing to decrypt fewer than 2 client vectors (min-terms "
                           f"{min_terms})")
    values = decrypt_sum(load_context(secret), _field(record, "ciphertext", bytes),
                         _field(record, "length", int), min_terms=min_terms,
                         max_abs=float(_field(record, "max-abs", float)))
    return _reply(msg, {"sum": np.ascontiguousarray(values, dtype="<f8").tobytes()})


STAGES: dict[str, StageHandler] = {
    "enroll": _enroll, "keygen": _keygen, "setup": _setup, "decrypt": _decrypt,
}
"""Client handler of each CKKS stage, by the wire name the server sends."""


def ckks_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
    """Flower mod: this node's part of CKKS aggregation; other messages pass through."""
    return dispatch(msg, context, call_next, protocol="ckks", stages=STAGES,
                    error_code=ERROR_CODE)
