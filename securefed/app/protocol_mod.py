"""Dispatch of a secure-aggregation protocol's stages inside a Flower client mod.

``secagg_mod`` and ``ckks_mod`` share one shape: act only on messages whose ``"secure"``
ConfigRecord names their protocol, route by its ``stage`` field through a registry of
stage handlers, and turn every refusal into an error reply that names the cause (the
server then treats the node as dropped for the round). Anything else passes through
to the next mod or handler untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Error, Message, MetricRecord

from securefed.exceptions import PayloadError, PrivacyError, SecurefedError
from securefed.secagg import flatten_payload
from securefed.secagg.errors import ProtocolError
from strategies.records import read_payload
from strategies.sum_only import PROTOCOL_RECORD

__all__ = ["CallNext", "ClientUpdate", "StageHandler", "client_update", "dispatch",
           "update_vector"]

log = logging.getLogger(__name__)

CallNext = Callable[[Message, Context], Message]
StageHandler = Callable[[Message, Context, CallNext], Message]


def update_vector(global_payload: Mapping[str, np.ndarray], new_payload: Mapping[str, np.ndarray],
                  clipping_range: float, on_overflow: str) -> tuple[np.ndarray, int, float]:
    """The flat update ``x - g`` (sorted keys), range-checked; ``(vector, clipped, max)``.

    Raises
    ------
    PayloadError
        If the keys or shapes of the two payloads differ, or a value is not finite.
    PrivacyError
        If a coordinate is outside ``[-c, c]`` and ``on_overflow = "error"``.
    """
    if set(global_payload) != set(new_payload):
        raise PayloadError(f"reply keys {sorted(new_payload)} differ from the global "
                           f"payload's {sorted(global_payload)}")
    flat, _ = flatten_payload({0: new_payload, 1: global_payload})
    delta = flat[0] - flat[1]
    if not np.all(np.isfinite(delta)):
        raise PayloadError("the update has NaN or Inf values")
    largest = float(np.max(np.abs(delta))) if delta.size else 0.0
    outside = int(np.count_nonzero(np.abs(delta) > clipping_range))
    if outside and on_overflow != "clip":
        raise PrivacyError(
            f"{outside} update coordinates exceed the secure-aggregation clipping range "
            f"[-{clipping_range:g}, {clipping_range:g}] (largest |value| {largest:.4g}); "
            "raise [secure] clipping_range, or set on_overflow = \"clip\" to clip and "
            "report them"
        )
    return np.clip(delta, -clipping_range, clipping_range), outside, largest


@dataclass(frozen=True)
class ClientUpdate:
    """A trained client's contribution to a sum: ``w / W · (x - g)`` and ``w / W``."""

    scaled: np.ndarray
    weight: int
    scale: float
    metrics: MetricRecord


def client_update(msg: Message, reply: Message, *, clipping_range: float, on_overflow: str,
                  max_weight: int, vector_length: int) -> ClientUpdate:
    """Turn a train reply into the weight-scaled update a sum-only protocol sends.

    The plaintext metrics keep everything but ``num-examples`` (the weight travels
    inside the masked or encrypted vector) and gain the clip count and largest update.

    Raises
    ------
    PayloadError
        A missing or out-of-range weight, or an update of the wrong size.
    PrivacyError
        An update coordinate outside ``[-c, c]`` with ``on_overflow = "error"``.
    """
    metrics = reply.content.metric_records.get("metrics")
    weight = None if metrics is None else metrics.get("num-examples")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= max_weight:
        raise PayloadError(f"'num-examples' must be an int in [1, max_weight={max_weight}], "
                           f"got {weight!r}; raise [secure] max_weight for larger clients")
    delta, clipped, largest = update_vector(read_payload(msg.content),
                                            read_payload(reply.content),
                                            clipping_range, on_overflow)
    if delta.size != vector_length:
        raise PayloadError(f"update has {delta.size} values, the round expects {vector_length}")
    plain = {k: v for k, v in (metrics or {}).items() if k != "num-examples"}
    plain.update({"secure-clipped": clipped, "secure-max-abs-update": largest})
    scale = weight / max_weight
    return ClientUpdate(delta * scale, weight, scale, MetricRecord(plain))


def dispatch(msg: Message, context: Context, call_next: CallNext, *, protocol: str,
             stages: Mapping[str, StageHandler], error_code: int,
             on_error: Callable[[str, Context], None] | None = None) -> Message:
    """Run the handler of the message's stage if it belongs to ``protocol``.

    Parameters
    ----------
    protocol : str
        The ``protocol`` field this mod answers (``"secagg+"``, ``"ckks"``).
    stages : mapping
        ``{stage name: handler(msg, context, call_next)}``.
    error_code : int
        Flower ``Error.code`` of a refusal.
    on_error : callable, optional
        ``on_error(stage, context)`` after a refusal (e.g. to drop stale secrets).
    """
    record = msg.content.config_records.get(PROTOCOL_RECORD) if msg.has_content() else None
    if record is None or record.get("protocol") != protocol:
        return call_next(msg, context)
    stage = record.get("stage")
    handler = stages.get(stage) if isinstance(stage, str) else None
    try:
        if handler is None:
            raise ProtocolError(f"unknown {protocol} stage {stage!r}; known: {sorted(stages)}")
        return handler(msg, context, call_next)
    except SecurefedError as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("%s %s refused: %s", protocol, stage, reason)
        if on_error is not None:
            on_error(str(stage), context)
        return Message(Error(code=error_code, reason=reason), reply_to=msg)
