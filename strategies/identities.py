"""Which data partition each connected node serves: one identity per client.

Flower names a node by its **node id**, a random 64-bit number drawn anew whenever a
SuperNode registers (every simulation, every restart). securefed's data, seeds and
reports are organised by **partition id** (``node_config["partition-id"]``): client
``i`` trains on partition ``i`` of ``partitions.json``. The server learns the map with
one discovery exchange before it samples anyone: a Flower ``query`` message of type
:data:`IDENTIFY_MESSAGE_TYPE` to every connected node it does not know yet, answered by
the ClientApp (:mod:`securefed.app.identify`) with its partition id and, where the node
holds a roster identity, its roster name. Both are labels, not private data (the
allow-list entry is in :mod:`securefed.app.egress`).

A reply is the adversary's input. A node is **excluded**, with the reason recorded,
when its reply is an error, holds anything but the identity record, or names a
partition id that is not an int in ``[0, num_partitions)``; a partition id claimed by
two or more connected nodes excludes all of them while the conflict lasts (neither
can be trusted to be the one that holds the data, and mixing them would silently
double one partition). :meth:`NodeIdentities.wait_for` raises a clear
:class:`~securefed.exceptions.AggregationError` naming every exclusion when too few
nodes remain.

Sampling, aggregation order and reports then go by partition id
(:mod:`strategies.sampling`), so a seed gives the same rounds whatever node ids Flower
drew. This module is numpy-free and never imports torch.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from securefed.exceptions import AggregationError, PayloadError

__all__ = ["IDENTIFY_MESSAGE_TYPE", "IDENTITY_RECORD", "NAME_KEY", "PARTITION_KEY",
           "Identity", "NodeIdentities", "parse_identity"]

log = logging.getLogger(__name__)

#: Flower message type of the discovery exchange (category ``query``, action ``identify``).
IDENTIFY_MESSAGE_TYPE = "query.identify"
#: The ConfigRecord of an identify reply, and its keys.
IDENTITY_RECORD = "identity"
PARTITION_KEY = "partition-id"
NAME_KEY = "name"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # securefed.roster member names


@dataclass(frozen=True)
class Identity:
    """What a node says it is: its partition id and, with a roster, its member name."""

    node_id: int
    partition_id: int
    name: str | None = None


def parse_identity(msg: Message, num_partitions: int | None) -> Identity:
    """The :class:`Identity` in an identify reply, else raise PayloadError.

    The reply holds exactly the ConfigRecord :data:`IDENTITY_RECORD` with an int
    ``partition-id`` in ``[0, num_partitions)`` (``num_partitions`` None: any int
    >= 0) and, optionally, a roster member ``name``; nothing else.
    """
    node = int(msg.metadata.src_node_id)
    if msg.has_error():
        raise PayloadError(f"identify: client reported an error: {str(msg.error.reason)[:200]}")
    content = msg.content
    kinds = {key: type(record).__name__ for key, record in content.items()}
    if kinds != {IDENTITY_RECORD: "ConfigRecord"}:
        raise PayloadError(f"identify reply holds exactly {{{IDENTITY_RECORD!r}: "
                           f"'ConfigRecord'}}, got {dict(list(kinds.items())[:4])}")
    record = content.config_records[IDENTITY_RECORD]
    extra = sorted(set(record) - {PARTITION_KEY, NAME_KEY})
    if extra:
        raise PayloadError(f"identify reply has unknown keys {extra[:4]}")
    pid = record.get(PARTITION_KEY)
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise PayloadError(f"identify: {PARTITION_KEY!r} must be an int, got "
                           f"{type(pid).__name__} {str(pid)[:40]!r}")
    if pid < 0 or (num_partitions is not None and pid >= num_partitions):
        bound = f"[0, {num_partitions})" if num_partitions is not None else ">= 0"
        raise PayloadError(f"identify: {PARTITION_KEY} {pid} is out of range; this run has "
                           f"partition ids {bound}")
    name = record.get(NAME_KEY)
    if name is not None and not (isinstance(name, str) and _NAME.match(name)):
        raise PayloadError(f"identify: {NAME_KEY!r} must be a roster member name (1-64 of "
                           f"letters, digits, '.', '_', '-'), got {str(name)[:40]!r}")
    return Identity(node, pid, name)


class NodeIdentities:
    """The partition id of every connected node, learned by discovery.

    Parameters
    ----------
    num_partitions : int, optional
        Valid partition ids are ``0 .. num_partitions - 1`` (``[data] num_clients``);
        None accepts any int >= 0.
    query_timeout : float
        Seconds to wait for identify replies in one exchange. A node that does not
        answer in time is asked again only while too few nodes can be used
        (:meth:`wait_for`), so a dead node costs one timeout, not one per round.
    """

    def __init__(self, num_partitions: int | None = None, *, query_timeout: float = 60.0
                 ) -> None:
        if num_partitions is not None and (isinstance(num_partitions, bool)
                                           or num_partitions < 1):
            raise AggregationError(f"num_partitions must be an int >= 1, got {num_partitions!r}")
        self.num_partitions = num_partitions
        self.query_timeout = query_timeout
        self._claims: dict[int, Identity] = {}
        self._invalid: dict[int, str] = {}
        self._silent: set[int] = set()  # asked, no answer yet
        self._connected: list[int] = []
        self.revision = 0  # bumped whenever the usable map or the exclusions change
        self._last: tuple[dict[int, int], dict[int, str]] = ({}, {})

    # ------------------------------------------------------------- discovery
    def refresh(self, grid: Grid, *, retry_silent: bool = False) -> None:
        """Ask every connected node that has not answered yet who it is (nodes that
        were asked before and stayed silent only with ``retry_silent``)."""
        self._connected = sorted(int(n) for n in grid.get_node_ids())
        unknown = [n for n in self._connected if n not in self._claims
                   and n not in self._invalid and (retry_silent or n not in self._silent)]
        if unknown:
            self._silent.update(unknown)
            msgs = [Message(content=RecordDict(), message_type=IDENTIFY_MESSAGE_TYPE,
                            dst_node_id=n, group_id="identify") for n in unknown]
            for reply in grid.send_and_receive(msgs, timeout=self.query_timeout):
                self._record(reply, set(unknown))
        current = (self.partitions(), self.excluded())
        if current != self._last:
            for node, reason in current[1].items():
                if self._last[1].get(node) != reason:
                    log.warning("node %d excluded: %s", node, reason)
            self._last = current
            self.revision += 1

    def _record(self, reply: Message, asked: set[int]) -> None:
        node = int(reply.metadata.src_node_id)
        if node not in asked or node in self._claims or node in self._invalid:
            return  # unasked, or a second reply: the first one counts
        self._silent.discard(node)
        try:
            self._claims[node] = parse_identity(reply, self.num_partitions)
        except PayloadError as exc:
            self._invalid[node] = str(exc)

    # ----------------------------------------------------------------- views
    def _by_partition(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for node in self._connected:
            claim = self._claims.get(node)
            if claim is not None:
                out.setdefault(claim.partition_id, []).append(node)
        return out

    def partitions(self) -> dict[int, int]:
        """``{node id: partition id}`` of the connected nodes that can be used."""
        return {nodes[0]: pid for pid, nodes in sorted(self._by_partition().items())
                if len(nodes) == 1}

    def usable(self) -> list[int]:
        """The partition ids that can be sampled, sorted."""
        return sorted(self.partitions().values())

    def excluded(self) -> dict[int, str]:
        """``{node id: reason}`` of connected nodes that cannot be used, and why."""
        out = {n: r for n, r in self._invalid.items() if n in self._connected}
        for pid, nodes in self._by_partition().items():
            if len(nodes) > 1:
                for node in nodes:
                    out[node] = (f"partition id {pid} is claimed by {len(nodes)} nodes "
                                 f"({', '.join(map(str, nodes))}); each node needs its "
                                 "own --node-config partition-id, so none of them is used")
        return dict(sorted(out.items()))

    def node_of(self, partition_id: int) -> int:
        """The node that serves ``partition_id`` (KeyError if none can be used)."""
        for node, pid in self.partitions().items():
            if pid == partition_id:
                return node
        raise KeyError(partition_id)

    def partition_of(self, node: int) -> int | None:
        """The partition id ``node`` claimed (None if it has not, or was refused)."""
        claim = self._claims.get(int(node))
        return None if claim is None else claim.partition_id

    def name_of(self, node: int) -> str | None:
        """The roster name ``node`` gave, if any."""
        claim = self._claims.get(int(node))
        return None if claim is None else claim.name

    def sort_key(self, node: int) -> tuple[int, int]:
        """Order by partition id (nodes without one last, by node id): the order in
        which replies are summed, so sums are bit-identical whatever the node ids."""
        pid = self.partition_of(node)
        return (pid, 0) if pid is not None else (2**63, int(node))

    def sorted_nodes(self, nodes: Iterable[int]) -> list[int]:
        """``nodes`` in partition-id order."""
        return sorted((int(n) for n in nodes), key=self.sort_key)

    def label(self, node: int) -> dict[str, int | str | None]:
        """``{"partition_id", "node_id"}`` (and ``name`` where known) for reports."""
        out: dict[str, int | str | None] = {"partition_id": self.partition_of(node),
                                            "node_id": int(node)}
        name = self.name_of(node)
        if name is not None:
            out["name"] = name
        return out

    # ------------------------------------------------------------------ wait
    def wait_for(self, grid: Grid, k: int, wait_s: float) -> list[int]:
        """Discover until ``k`` partitions can be sampled; return them, sorted.

        Waits up to ``wait_s`` for nodes to connect and answer.

        Raises
        ------
        AggregationError
            If fewer than ``k`` nodes connected within ``wait_s``, or ``k`` or more
            connected and answered but exclusions leave fewer than ``k`` (the message
            names every excluded node and its reason).
        """
        deadline = time.monotonic() + wait_s
        retry = False
        while True:
            self.refresh(grid, retry_silent=retry)
            retry = True
            usable = self.usable()
            if len(usable) >= k:
                return usable
            excluded = self.excluded()
            answered = len(usable) + len(excluded)
            if excluded and len(self._connected) >= k and answered == len(self._connected):
                raise AggregationError(self._shortfall(k, usable, excluded))
            if time.monotonic() > deadline:
                raise AggregationError(
                    f"only {len(usable)} identified nodes after {wait_s:.0f} s "
                    f"({len(self._connected)} connected); {k} are needed"
                    + (f". {self._shortfall(k, usable, excluded)}" if excluded else ""))
            log.info("waiting for nodes: %d identified, %d needed", len(usable), k)
            time.sleep(1.0)

    @staticmethod
    def _shortfall(k: int, usable: list[int], excluded: Mapping[int, str]) -> str:
        reasons = "; ".join(f"node {n}: {r}" for n, r in list(excluded.items())[:8])
        more = f" (+{len(excluded) - 8} more)" if len(excluded) > 8 else ""
        return (f"{len(usable)} nodes can be used, {k} are needed; excluded: "
                f"{reasons}{more}")
