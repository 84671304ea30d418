"""The client's side of the discovery exchange: "which partition do you serve?"

Before it samples anyone the server sends every connected node a Flower ``query``
message of type :data:`~strategies.identities.IDENTIFY_MESSAGE_TYPE`
(:class:`strategies.identities.NodeIdentities`); :func:`handle_identify` answers it
with the node's partition id from its own config (``node_config["partition-id"]``,
:func:`securefed.app.settings.partition_id_of`) and, where the node holds a roster
identity, its roster member name (``securefed-name``, :mod:`securefed.roster`; in
simulation completed from :data:`securefed.app.nodes.NODE_CONFIG_DIR_ENV`).

Neither is private: the partition id is the label of a shard of the run's public
partitioning (``partitions.json`` lists each one's label histogram), and the roster
name is the node's public member name, which its SecAgg+ / CKKS setup replies carry
anyway. The reply still leaves only through ``egress_mod``, whose allow-list names it
explicitly (:mod:`securefed.app.egress`, kind ``identify``). A node without a
partition id replies with an error, and the server excludes it with that reason.

This module never imports torch (a SuperNode answers the query in a fresh process).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from securefed.app.nodes import node_config_of
from securefed.app.settings import partition_id_of
from securefed.roster import NODE_CONFIG_NAME
from strategies.identities import IDENTIFY_MESSAGE_TYPE, IDENTITY_RECORD, NAME_KEY, PARTITION_KEY

__all__ = ["IDENTIFY_ACTION", "handle_identify", "register_identify"]

#: The ``query`` action the handler is registered under (``query.identify``).
IDENTIFY_ACTION = IDENTIFY_MESSAGE_TYPE.split(".", 1)[1]


def handle_identify(msg: Message, context: Context) -> Message:
    """Reply with this node's partition id (and roster name, if it has one)."""
    record = ConfigRecord({PARTITION_KEY: partition_id_of(context)})
    name = node_config_of(context).get(NODE_CONFIG_NAME)
    if isinstance(name, str) and name:
        record[NAME_KEY] = name
    return Message(RecordDict({IDENTITY_RECORD: record}), reply_to=msg)


def register_identify(app: ClientApp) -> ClientApp:
    """Register :func:`handle_identify` as ``app``'s ``query.identify`` handler; return
    ``app`` (for ClientApps built elsewhere, e.g. in tests)."""
    app.query(IDENTIFY_ACTION)(handle_identify)
    return app
