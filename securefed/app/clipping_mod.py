"""Client-side clipping for user-level DP, as a Flower mod on securefed's payloads.

When the server's user-level DP wrapper runs client-side clipping it puts Flower's
``"clipping_norm"`` key in the train config (:mod:`strategies.user_dp`). This mod then
lets the handler train, clips the update ``Δ = x - g`` of the reply to L2 norm ``C``
with :func:`strategies.user_dp.flat_clip` (FlatClip, McMahan et al. 2018,
arXiv:1710.06963), writes ``g + clip(Δ)`` back, and:

* reports Flower's ``"norm_bit"`` (1 if the update was clipped) only when the server
  asks for it (``"securefed.report-norm-bit"``: client-side adaptive clipping, which is
  plaintext-only) — under secure aggregation the bit would travel in the clear;
* sets the reply's weight ``num-examples`` to 1 (under user-level DP every user counts
  once; under secure aggregation the weight travels inside the masked vector, so it
  must be set here). The true count never leaves (``securefed.app.egress``).

Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod`` cannot be used as they are:
they require exactly one ArrayRecord and one ConfigRecord, and securefed's messages
carry a packed payload plus its layout (:mod:`strategies.records`). Placement: after
``secagg_mod`` / ``ckks_mod`` in :data:`securefed.app.client_app.MODS`, so clipping
happens on the plaintext update *before* it is masked or encrypted. Numpy only.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Context, Error, Message, MessageType, MetricRecord
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from securefed.app.protocol_mod import CallNext
from securefed.exceptions import PayloadError
from strategies.records import read_payload, write_payload
from strategies.user_dp import KEY_REPORT_NORM_BIT, flat_clip

__all__ = ["CLIPPING_ERROR_CODE", "clipping_mod"]

#: Flower ``Error.code`` of a refused clipping (malformed norm, payload or update).
CLIPPING_ERROR_CODE = 7_301


def _reports_bit(msg: Message) -> bool:
    config = msg.content.config_records.get("config")
    return config is not None and bool(config.get(KEY_REPORT_NORM_BIT, False))


def _clipping_norm(msg: Message) -> float | None:
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return None
    config = msg.content.config_records.get("config")
    if config is None or KEY_CLIPPING_NORM not in config:
        return None
    value = config[KEY_CLIPPING_NORM]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise PayloadError(f"{KEY_CLIPPING_NORM!r} must be a finite number > 0, got {value!r}")
    return float(value)


def clip_reply(msg: Message, reply: Message, clipping_norm: float) -> Message:
    """Clip ``reply``'s update against ``msg``'s global payload (see the module).

    Raises
    ------
    PayloadError
        If the payloads' keys differ, a value is not finite or the weight is missing.
    """
    g = read_payload(msg.content)
    x = read_payload(reply.content)
    if set(g) != set(x):
        raise PayloadError(f"reply keys {sorted(x)} differ from the global payload's {sorted(g)}")
    keys = sorted(g)
    new = [np.asarray(x[k], dtype=np.float64) for k in keys]
    if not all(np.all(np.isfinite(a)) for a in new):
        raise PayloadError("the trained payload has NaN or Inf values")
    old = [np.asarray(g[k], dtype=np.float64) for k in keys]
    clipped = flat_clip(new, old, clipping_norm)
    metrics = reply.content.metric_records.get("metrics")
    if metrics is None or "num-examples" not in metrics:
        raise PayloadError("reply lacks metric 'num-examples'")
    plain = dict(metrics)
    plain["num-examples"] = 1
    if _reports_bit(msg):  # adaptive clipping only: otherwise the bit would leak for nothing
        plain[KEY_NORM_BIT] = int(clipped)
    content = reply.content
    for name, record in write_payload({k: new[i].astype(x[k].dtype)
                                       for i, k in enumerate(keys)}).items():
        content[name] = record
    content["metrics"] = MetricRecord(plain)
    return reply


def clipping_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
    """Flower mod: clip the trained update when the server asks for it (see module)."""
    try:
        norm = _clipping_norm(msg)
    except PayloadError as exc:
        return Message(Error(code=CLIPPING_ERROR_CODE, reason=f"PayloadError: {exc}"),
                       reply_to=msg)
    if norm is None:
        return call_next(msg, context)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    try:
        return clip_reply(msg, reply, norm)
    except PayloadError as exc:
        return Message(Error(code=CLIPPING_ERROR_CODE, reason=f"PayloadError: {exc}"),
                       reply_to=msg)
