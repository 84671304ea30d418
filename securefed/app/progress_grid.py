"""A :class:`flwr.serverapp.Grid` that reports progress inside a round.

:func:`securefed.app.server_app.run_server` wraps the grid it is given in a
:class:`ProgressGrid`, so every ``send_and_receive`` of every strategy and wrapper
(plain FedAvg, SecAgg+ stages, CKKS stages, user-level DP) goes through it. It pushes
the messages and pulls the replies itself, as Flower's own grids do, and writes
``progress.json`` (atomically) into the run directory whenever a reply arrives::

    {"round": 3, "stage": "secagg+ masked-input", "message_type": "train",
     "sent": 4, "replies": 2, "stage_started": 1767000000.1,
     "round_started": 1766999990.2, "updated": 1767000012.9}

``securefed run``'s progress bar (:mod:`securefed.report.progress`) follows that file,
because under Flower's simulation engine the ServerApp runs in another process.

Timeouts are Flower's: with ``timeout=None`` it waits until every message has its
reply, otherwise it pulls until every reply is in or ``timeout`` seconds have passed
since the push. A grid that answers while it is pushed (``delivers_on_push = True``:
the in-process grid) is pushed one message at a time and pulled at once, so the
replies and their order are exactly those of its own ``send_and_receive``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from securefed.rundir import PROGRESS, write_json_atomic

__all__ = ["ProgressGrid", "stage_of"]

#: Name of the ConfigRecord carrying a secure wrapper's protocol and stage
#: (``strategies.sum_only.PROTOCOL_RECORD``).
_PROTOCOL_RECORD = "secure"


def stage_of(message: Message) -> str:
    """The protocol stage a message belongs to: ``"secagg+ share-keys"``,
    ``"ckks setup"``, ..., or its message type (``"train"``, ``"evaluate"``)."""
    record = message.content.config_records.get(_PROTOCOL_RECORD)
    stage = record.get("stage") if record is not None else None
    if isinstance(stage, str) and stage:
        protocol = record.get("protocol") if record is not None else None
        return f"{protocol if isinstance(protocol, str) else 'secure'} {stage}"
    return str(message.metadata.message_type)


def _round_of(message: Message) -> int | None:
    group = message.metadata.group_id
    return int(group) if group.isdigit() else None


class ProgressGrid(Grid):
    """Delegate to ``grid``; report the replies of each ``send_and_receive``.

    Parameters
    ----------
    grid : Grid
        The grid to wrap (Flower's, or :class:`securefed.app.grid.InProcessGrid`).
    run_dir : Path
        Where ``progress.json`` goes.
    poll_interval : float
        Seconds between pulls while replies are outstanding (Flower's grids wait 3 s).
    """

    def __init__(self, grid: Grid, run_dir: Path, *, poll_interval: float = 0.5) -> None:
        self.grid = grid
        self.path = Path(run_dir) / PROGRESS
        self.poll_interval = poll_interval
        self._round: int | None = None
        self._round_started: float | None = None

    # ------------------------------------------------------------ delegation
    def set_run(self, run: Run) -> None:
        """Set the run of the wrapped grid."""
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped grid's run."""
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        """Delegated to the wrapped grid."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegated to the wrapped grid."""
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Delegated to the wrapped grid."""
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegated to the wrapped grid."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegated to the wrapped grid."""
        return self.grid.pull_messages(message_ids)

    def __getattr__(self, name: str) -> Any:
        # anything else the wrapped grid offers (e.g. the in-process grid's contexts)
        if name == "grid":
            raise AttributeError(name)
        return getattr(self.grid, name)

    # -------------------------------------------------------------- progress
    def _report(self, stage: str, message_type: str, sent: int, replies: int,
                started: float) -> None:
        with contextlib.suppress(OSError):  # progress is a display aid, never fatal
            write_json_atomic(self.path, {
                "round": self._round, "stage": stage, "message_type": message_type,
                "sent": sent, "replies": replies, "stage_started": started,
                "round_started": self._round_started, "updated": time.time()})

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``, pull their replies (Flower's timeout semantics) and
        write ``progress.json`` as they arrive."""
        messages = list(messages)
        if not messages:
            return []
        first = messages[0]
        server_round = _round_of(first)
        if server_round is not None and server_round != self._round:
            self._round, self._round_started = server_round, time.time()
        stage, kind, sent = stage_of(first), str(first.metadata.message_type), len(messages)
        started = time.time()
        self._report(stage, kind, sent, 0, started)
        replies: list[Message] = []
        if getattr(self.grid, "delivers_on_push", False):
            for msg in messages:
                ids = list(self.grid.push_messages([msg]))
                replies.extend(self.grid.pull_messages(ids))
                self._report(stage, kind, sent, len(replies), started)
            return replies
        pending = set(self.grid.push_messages(messages))
        del messages
        end = time.time() + (timeout if timeout is not None else 0.0)
        while timeout is None or time.time() < end:
            got = list(self.grid.pull_messages(pending))
            if got:
                replies.extend(got)
                pending.difference_update(m.metadata.reply_to_message_id for m in got)
                self._report(stage, kind, sent, len(replies), started)
            if not pending:
                break
            time.sleep(self.poll_interval)
        return replies
