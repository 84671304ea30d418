"""An in-process :class:`flwr.serverapp.Grid` for unit tests and fast sweeps.

It runs the *same* ServerApp and ClientApp code as Flower's simulation engine and a
SuperLink/SuperNode deployment: ``send_and_receive`` hands every message to the real
:class:`flwr.clientapp.ClientApp` (mods included) with a per-node
:class:`flwr.app.Context` that persists across rounds, exactly as a SuperNode keeps its
context. Messages pass through Flower's own object serialisation in both directions
(deflate, then inflate), so neither side can mutate what the other holds and the bytes
are those a real transport carries. No Flower processes, no Ray.

Node ids are random 64-bit numbers, fresh for every grid, exactly as a SuperLink draws
them, so nothing can rely on a node id meaning a partition: the server learns each
node's partition id by asking (:mod:`strategies.identities`). A test that must address
a node by id before the grid exists pins them with ``node_ids``.

It is not a privacy boundary and not a replacement for integration tests through real
Flower; it exists so that the app logic can be exercised in seconds.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import NODE_ID_NUM_BYTES, SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.corestate.utils import generate_rand_int_from_bytes
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid", "transport"]

UserConfig = Mapping[str, str | int | float | bool]


def transport(msg: Message) -> Message:
    """A copy of ``msg`` as the receiver would get it over Flower's transport.

    The content is deflated into Flower's object tree and inflated again, exactly the
    serialisation a SuperLink round trip applies; the metadata is copied.
    """
    metadata = copy.deepcopy(msg.metadata)
    if msg.has_error():
        return Message(error=copy.deepcopy(msg.error), metadata=metadata)  # type: ignore[call-overload]
    objects = get_all_nested_objects(msg.content)
    contents = {oid: obj.deflate() for oid, obj in objects.items()}
    content = inflate_object_from_contents(msg.content.object_id, contents)
    assert isinstance(content, RecordDict)
    return Message(content=content, metadata=metadata)  # type: ignore[call-overload]


def _node_ids(num_nodes: int, given: Sequence[int] | None) -> list[int]:
    """``given`` (checked), or ``num_nodes`` distinct random ids as a SuperLink draws them."""
    if given is not None:
        ids = [int(n) for n in given]
        if len(ids) != num_nodes or len(set(ids)) != num_nodes or min(ids) < 1:
            raise ValueError(f"node_ids must be {num_nodes} distinct ints >= 1, got {ids}")
        return ids
    out: list[int] = []
    for _ in range(num_nodes):
        out.append(generate_rand_int_from_bytes(
            NODE_ID_NUM_BYTES, exclude={0, SUPERLINK_NODE_ID, *out}))
    return out


class InProcessGrid(Grid):
    """Deliver messages to a :class:`ClientApp` in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app whose handlers serve every node.
    num_nodes : int
        Number of virtual SuperNodes; the ``i``-th gets ``partition-id = i``.
    run_config : mapping
        The run config every node sees (as Flower's ``context.run_config``).
    run_id : int
        Identifier of this run.
    drop : callable, optional
        ``drop(message) -> bool``; a message for which it returns True gets no reply,
        as when a node vanishes. For dropout tests.
    node_configs : sequence of mappings, optional
        Node ``i``'s own config (as a SuperNode's ``--node-config``), e.g. from
        :func:`securefed.app.nodes.prepare_node_configs`; default
        ``{"partition-id": i, "num-partitions": num_nodes}``.
    node_ids : sequence of int, optional
        The ``i``-th node's id (distinct, positive). Default: random 64-bit ids drawn
        as Flower's SuperLink draws them, different for every grid.
    """

    #: Replies exist as soon as ``push_messages`` returns (see ``progress_grid``).
    delivers_on_push = True

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: UserConfig,
        *,
        run_id: int = 1,
        drop: Callable[[Message], bool] | None = None,
        node_configs: Sequence[Mapping[str, Any]] | None = None,
        node_ids: Sequence[int] | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        if node_configs is not None and len(node_configs) != num_nodes:
            raise ValueError(f"{len(node_configs)} node configs for {num_nodes} nodes")
        if TaskIdentity._run_id is None:  # what a ServerApp process gets from Flower
            TaskIdentity.run_id = run_id
            TaskIdentity.node_id = SUPERLINK_NODE_ID
            TaskIdentity.task_id = 0
        self.client_app = client_app
        self.drop = drop
        self._run = Run.create_empty(run_id)
        self._run.override_config = dict(run_config)
        self._node_ids = _node_ids(num_nodes, node_ids)
        self.contexts = {
            node_id: Context(
                run_id=run_id,
                node_id=node_id,
                node_config=dict(node_configs[i]) if node_configs is not None
                else {"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, node_id in enumerate(self._node_ids)
        }
        self._replies: dict[str, Message] = {}

    def node_of(self, partition_id: int) -> int:
        """The id of the node whose config names ``partition_id`` (KeyError if none)."""
        for node, context in self.contexts.items():
            if context.node_config.get("partition-id") == partition_id:
                return node
        raise KeyError(partition_id)

    def set_run(self, run: Run) -> None:
        """Replace the run this grid serves."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build an instruction message (kept for the abstract interface)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The virtual SuperNodes' ids."""
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run each message through the ClientApp now; keep the replies for pulling."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_created_at"] = time.time()
            node = msg.metadata.dst_node_id
            if node not in self.contexts:
                raise ValueError(f"message for unknown node {node}")
            ids.append(msg.metadata.message_id)
            if self.drop is not None and self.drop(msg):
                continue
            delivered = transport(msg)
            try:
                reply = self.client_app(delivered, self.contexts[node])
            except Exception as exc:  # a crashing ClientApp becomes an error reply
                reason = f"{type(exc).__name__}: {exc}"
                reply = Message(Error(code=0, reason=reason), reply_to=delivered)
            self._replies[msg.metadata.message_id] = transport(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return (and forget) the replies to ``message_ids`` that exist."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull every reply (dropped nodes simply do not reply)."""
        return list(self.pull_messages(list(self.push_messages(messages))))

