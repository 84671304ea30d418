"""The single exit of a client: every reply is checked against the run's allow-list.

``egress_mod`` is the **outermost** mod of the ClientApp
(:data:`securefed.app.client_app.MODS`), so every reply of every handler and every
other mod passes it last. It classifies the reply by the message it answers
(``identify``, ``train``, ``evaluate`` or ``<protocol>/<stage>``;
:mod:`securefed.app.egress`) and compares the
reply's content with the :class:`~securefed.app.egress.Shape` of that kind in the
allow-list resolved from the run config (:func:`~securefed.app.egress.egress_for`):

* a **metric** (MetricRecord key, or a whole MetricRecord) outside the allow-list is
  **removed** and logged: statistics are informational, and the protocol does not
  depend on them;
* anything else outside it — an ArrayRecord, a ConfigRecord or one of its keys, a kind
  of reply the mode does not permit at all (a plaintext ``train`` reply under SecAgg+,
  say), or a fixed metric with another value (a weight that is not 1 under DP) —
  turns the whole reply into an **error** (code :data:`EGRESS_ERROR_CODE`) naming what
  was refused: removing it would change the protocol, and sending it would leak.

The allow-list follows the run config, which in a deployment arrives through the
SuperLink. So that a server cannot downgrade a node by sending it a run config without
secure aggregation, a node whose **own** config holds a roster
(:data:`securefed.roster.NODE_CONFIG_ROSTER`: it was enrolled for SecAgg+ or CKKS) never
lets a plaintext ``train`` reply out, whatever the run config says.

Error replies pass unchanged (they carry a reason, no content). See
``docs/privacy.md`` ("What leaves a client") and ``docs/threat-model.md``.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Context, Error, Message, MessageType, MetricRecord

from securefed.app.egress import IDENTIFY_KIND, SECURE_RECORD, AllowList, Shape, egress_for
from securefed.app.nodes import node_config_of
from securefed.app.protocol_mod import CallNext
from securefed.app.settings import config_from_run_config
from securefed.exceptions import PrivacyError
from securefed.roster import NODE_CONFIG_ROSTER
from strategies.identities import IDENTIFY_MESSAGE_TYPE

__all__ = ["EGRESS_ERROR_CODE", "egress_mod", "enforce", "reply_kind"]

log = logging.getLogger(__name__)

#: Flower ``Error.code`` of a reply refused at the client's exit.
EGRESS_ERROR_CODE = 7_401


def reply_kind(msg: Message) -> str:
    """The kind of the reply to ``msg``: ``identify``, ``train``, ``evaluate`` or
    ``protocol/stage`` (any other message type: the type itself, in no allow-list)."""
    kind = msg.metadata.message_type
    if kind == IDENTIFY_MESSAGE_TYPE:
        return IDENTIFY_KIND
    if kind == MessageType.EVALUATE:
        return "evaluate"
    if kind != MessageType.TRAIN:
        return str(kind)
    record = msg.content.config_records.get(SECURE_RECORD) if msg.has_content() else None
    if record is None:
        return "train"
    return f"{record.get('protocol')!s}/{record.get('stage')!s}"


def enforce(kind: str, reply: Message, allow: AllowList) -> Message:
    """Check ``reply`` (of ``kind``) against ``allow``; drop stray metrics in place.

    Raises
    ------
    PrivacyError
        If the reply holds something outside the allow-list that is not a metric, a
        fixed metric with another value, or is of a kind the mode does not permit.
    """
    shape: Shape | None = allow.get(kind)
    if shape is None:
        raise PrivacyError(f"a {kind!r} reply may not leave this client in this mode; "
                           f"permitted replies: {', '.join(sorted(allow))}")
    content = reply.content
    stray = sorted(set(content.array_records) - shape.arrays)
    if stray:
        raise PrivacyError(f"{kind} reply: ArrayRecord(s) {stray} may not leave this client")
    for name, config in content.config_records.items():
        allowed = shape.configs.get(name)
        if allowed is None:
            raise PrivacyError(f"{kind} reply: ConfigRecord {name!r} may not leave this client")
        extra = sorted(set(config) - allowed)
        if extra:
            raise PrivacyError(f"{kind} reply: keys {extra} of ConfigRecord {name!r} may not "
                               "leave this client")
    for name in list(content.metric_records):
        record = content.metric_records[name]
        allowed = shape.metrics.get(name, frozenset())
        dropped = sorted(set(record) - set(allowed))
        if dropped:
            log.info("egress: %s reply: dropped metric(s) %s of %r (not in the allow-list)",
                     kind, dropped, name)
        kept: dict[str, Any] = {k: v for k, v in record.items() if k in allowed}
        for key, value in shape.fixed.items():
            if key in kept and kept[key] != value:
                raise PrivacyError(f"{kind} reply: metric {key!r} must be {value:g} in this "
                                   f"mode, got {kept[key]!r}")
        if kept:
            content[name] = MetricRecord(kept)
        else:
            del content[name]
    return reply


def egress_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
    """Flower mod: let only the allow-listed content of a reply leave (see module)."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    kind = reply_kind(msg)
    try:
        if kind == "train" and node_config_of(context).get(NODE_CONFIG_ROSTER):
            raise PrivacyError("this node holds a roster (its own config names "
                               f"{NODE_CONFIG_ROSTER!r}) and sends its update only inside "
                               "secure aggregation; the run config asks for a plaintext "
                               "train reply")
        allow = egress_for(config_from_run_config(context.run_config))
        return enforce(kind, reply, allow)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("egress: refused a %s reply: %s", kind, reason)
        return Message(Error(code=EGRESS_ERROR_CODE, reason=reason), reply_to=msg)
