"""Checks of a client's plaintext reply, before it can touch the global adapter.

A reply is the adversary's input (a hostile client; see ``docs/threat-model.md``).
Everything that can be checked without decoding is checked first, then the payload is
decoded against the round's spec (:func:`strategies.records.read_payload`, bounded
before numpy). Every failure is a :class:`~securefed.exceptions.PayloadError` whose
message is the reason recorded for the node. FedAvg (McMahan et al., arXiv
1602.05629) weights a client by its example count, so the weight is bounded like the
secure modes bound it (``[secure] max_weight``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

from securefed.exceptions import PayloadError
from strategies.records import ARRAYS_KEY, LAYOUT_KEY, read_payload
from strategies.validation import PayloadSpec, check_metrics, check_weight

__all__ = ["METRICS_KEY", "WEIGHT_KEY", "check_eval_reply", "check_train_reply",
           "screen_replies"]

METRICS_KEY = "metrics"
WEIGHT_KEY = "num-examples"
#: The records a plaintext reply holds: name -> record type, nothing more.
TRAIN_RECORDS = {ARRAYS_KEY: "ArrayRecord", LAYOUT_KEY: "ConfigRecord",
                 METRICS_KEY: "MetricRecord"}
EVAL_RECORDS = {METRICS_KEY: "MetricRecord"}


def _content(msg: Message, expected: dict[str, str], what: str) -> RecordDict:
    if msg.has_error():
        raise PayloadError(f"client reported an error: {str(msg.error.reason)[:200]}")
    content = msg.content
    if not isinstance(content, RecordDict):
        raise PayloadError(f"content must be a RecordDict, got {type(content).__name__}")
    kinds = {key: type(record).__name__ for key, record in content.items()}
    if kinds != expected:
        raise PayloadError(f"{what} reply holds exactly {expected}, got "
                           f"{dict(list(kinds.items())[:6])}")
    return content


def _weight(metrics: MetricRecord, max_weight: int) -> int:
    if WEIGHT_KEY not in metrics:
        raise PayloadError(f"reply lacks MetricRecord {METRICS_KEY!r} with {WEIGHT_KEY!r}")
    return check_weight(metrics[WEIGHT_KEY], key=WEIGHT_KEY, max_weight=max_weight)


def check_train_reply(msg: Message, spec: PayloadSpec, *, max_weight: int
                      ) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
    """(payload, weight, metrics) of a valid train reply, else raise PayloadError.

    The records are exactly ``arrays`` (ArrayRecord), ``layout`` (ConfigRecord) and
    ``metrics`` (MetricRecord of finite scalars); the weight is an int in
    ``[1, max_weight]``; the layout matches ``spec`` before anything is decoded, and
    the decoded payload has finite values within the size limit.
    """
    content = _content(msg, TRAIN_RECORDS, "a train")
    metrics_record = content.metric_records[METRICS_KEY]
    weight = _weight(metrics_record, max_weight)
    metrics = check_metrics(metrics_record, name=METRICS_KEY)
    return read_payload(content, spec), weight, metrics


def check_eval_reply(msg: Message, *, max_weight: int) -> tuple[int, dict[str, float]]:
    """(weight, metrics) of a valid evaluate reply; weight 0 means no validation data."""
    content = _content(msg, EVAL_RECORDS, "an evaluate")
    record = content.metric_records[METRICS_KEY]
    metrics = check_metrics(record, name=METRICS_KEY)
    if record.get(WEIGHT_KEY) == 0 and not isinstance(record.get(WEIGHT_KEY), bool):
        return 0, metrics
    return _weight(record, max_weight), metrics


def screen_replies(replies: Iterable[Message], sampled: list[int]
                   ) -> tuple[list[tuple[int, Message]], dict[int, str]]:
    """(node, reply) of the nodes that replied once and were sampled (``sampled``
    empty: any node); the reason for every other node."""
    listed = list(replies)
    nodes = [int(m.metadata.src_node_id) for m in listed]
    counts = Counter(nodes)
    allowed = set(sampled)
    rejected: dict[int, str] = {}
    kept = []
    for node, msg in zip(nodes, listed, strict=True):
        if counts[node] > 1:
            rejected[node] = f"{counts[node]} replies this round (one expected); all are dropped"
        elif allowed and node not in allowed:
            rejected[node] = "reply from a node not sampled this round"
        else:
            kept.append((node, msg))
    return kept, rejected
