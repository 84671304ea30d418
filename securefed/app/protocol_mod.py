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

from flwr.app import Context, Error, Message

from securefed.exceptions import SecurefedError
from securefed.secagg.errors import ProtocolError
from strategies.sum_only import PROTOCOL_RECORD

__all__ = ["CallNext", "StageHandler", "dispatch"]

log = logging.getLogger(__name__)

CallNext = Callable[[Message, Context], Message]
StageHandler = Callable[[Message, Context, CallNext], Message]


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
