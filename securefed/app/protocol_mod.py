"""Dispatch of a secure-aggregation protocol's stages inside a Flower client mod.

``secagg_mod`` and ``ckks_mod`` share one shape: act only on messages whose ``"secure"``
ConfigRecord names their protocol, route by its ``stage`` field through a registry of
stage handlers, and turn every refusal into an error reply that names the cause (the
server then treats the node as dropped for the round). Anything else passes through
to the next mod or handler untouched.

:func:`client_update` builds what a trained client contributes to the sum. Nothing
about the update travels beside it in the clear: its L-infinity norm never leaves, and
its clip count and the statistics ``[report] client_stats = "secure-sum"`` asks for are
appended to the masked / encrypted vector (:class:`strategies.sum_only.SecureStats`).
What else may leave is decided by :mod:`securefed.app.egress`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message, MetricRecord

from securefed.exceptions import PayloadError, PrivacyError, SecurefedError
from securefed.secagg import flatten_payload
from securefed.secagg.errors import ProtocolError
from strategies.records import read_payload
from strategies.sum_only import PROTOCOL_RECORD, SecureStats
from strategies.validation import check_weight

__all__ = ["CallNext", "ClientUpdate", "StageHandler", "client_update", "dispatch",
           "secure_stats_of", "update_vector"]

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
        # the count and the largest value stay in this client's log: the refusal that
        # reaches the server says only that the range was exceeded
        log.warning("%d update coordinates exceed [-%g, %g] (largest |value| %.4g)",
                    outside, clipping_range, clipping_range, largest)
        raise PrivacyError(
            "update coordinates exceed the secure-aggregation clipping range "
            f"[-{clipping_range:g}, {clipping_range:g}]; raise [secure] clipping_range, or "
            "set on_overflow = \"clip\" to clip them (the client's log has the count)"
        )
    return np.clip(delta, -clipping_range, clipping_range), outside, largest


def secure_stats_of(context: Context) -> SecureStats:
    """The statistics this client appends to its vector, from its own run config."""
    from securefed.app.egress import secure_stat_names
    from securefed.app.settings import config_from_run_config

    config = config_from_run_config(context.run_config)
    return SecureStats(secure_stat_names(config), config.report.loss_bound)


@dataclass(frozen=True)
class ClientUpdate:
    """A trained client's contribution to a sum: ``[w / W · (x - g), stats]`` and
    ``w / W``."""

    scaled: np.ndarray
    weight: int
    scale: float
    metrics: MetricRecord


def client_update(msg: Message, reply: Message, *, clipping_range: float, on_overflow: str,
                  max_weight: int, vector_length: int,
                  stats: SecureStats | None = None) -> ClientUpdate:
    """Turn a train reply into the weight-scaled update a sum-only protocol sends.

    The plaintext metrics keep everything but ``num-examples`` (the weight travels
    inside the masked or encrypted vector); the egress allow-list then drops what may
    not leave. ``stats`` (the clip count as a fraction of the coordinates, train loss
    and accuracy) are appended to the vector, never sent in the clear.

    Raises
    ------
    PayloadError
        A missing or out-of-range weight, or an update of the wrong size.
    PrivacyError
        An update coordinate outside ``[-c, c]`` with ``on_overflow = "error"``.
    """
    metrics = reply.content.metric_records.get("metrics")
    weight = check_weight(None if metrics is None else metrics.get("num-examples"),
                          key="num-examples", max_weight=max_weight)
    stats = stats or SecureStats()
    delta, clipped, _ = update_vector(read_payload(msg.content), read_payload(reply.content),
                                      clipping_range, on_overflow)
    if delta.size + len(stats) != vector_length:
        raise PayloadError(f"update has {delta.size} values and {len(stats)} statistics, "
                           f"the round expects {vector_length} (the server and this client "
                           "disagree on [secure] / [report])")
    plain = {k: v for k, v in (metrics or {}).items() if k != "num-examples"}
    values: dict[str, Any] = {**plain, "secure-clipped": clipped / max(delta.size, 1)}
    scale = weight / max_weight
    vector = np.concatenate([delta * scale, stats.encode(values, clipping_range)])
    return ClientUpdate(vector, weight, scale, MetricRecord(plain))


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
