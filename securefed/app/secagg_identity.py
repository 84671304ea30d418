"""Where a node finds its SecAgg+ identity, roster and floors: never from the server.

A deployment hands each SuperNode its files in its own node config::

    flower-supernode ... --node-config "partition-id=0 num-partitions=4 \\
        securefed-roster=/etc/securefed/roster.json \\
        securefed-identity=/etc/securefed/site-a.pem securefed-name=site-a \\
        securefed-secagg-min-clients=3 securefed-secagg-min-threshold=2"

(:data:`securefed.roster.NODE_CONFIG_KEYS` and
:data:`securefed.secagg.floors.NODE_CONFIG_FLOORS`). Flower's simulation engine gives a
node only ``partition-id`` and ``num-partitions``, so simulation and in-process runs,
which stand in for a deployment's enrolment, write a roster for the run with
:func:`provision_roster` and tell the node processes where it lies through the
environment variable :data:`ROSTER_DIR_ENV` (the launcher's own environment, inherited by
the simulation's workers, never a value the ServerApp sends); each simulated node then
takes the identity ``node-<partition-id>`` from it. See ``docs/secure-aggregation.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from securefed.exceptions import ConfigError
from securefed.roster import (
    NODE_CONFIG_IDENTITY,
    NODE_CONFIG_NAME,
    NODE_CONFIG_ROSTER,
    Identity,
    Roster,
    generate_roster,
    identity_from_node_config,
)

__all__ = ["ROSTER_DIR_ENV", "node_identity", "node_name", "provision_roster"]

ROSTER_DIR_ENV = "SECUREFED_ROSTER_DIR"
"""Environment variable naming a run's roster directory (simulation and in-process)."""


def node_name(partition_id: int) -> str:
    """The roster name of the simulated node serving ``partition_id``."""
    return f"node-{int(partition_id)}"


def provision_roster(directory: str | Path, num_nodes: int) -> dict[int, dict[str, str]]:
    """Generate a roster of ``num_nodes`` simulated nodes under ``directory``.

    Returns
    -------
    dict
        ``{partition id: node config}`` holding the three roster keys, as a deployment
        would pass them with ``--node-config``.
    """
    if num_nodes < 1:
        raise ConfigError(f"num_nodes must be >= 1, got {num_nodes}")
    root = Path(directory)
    _, paths = generate_roster([node_name(i) for i in range(num_nodes)], root)
    return {i: {NODE_CONFIG_ROSTER: str(root / "roster.json"),
                NODE_CONFIG_IDENTITY: str(paths[node_name(i)]),
                NODE_CONFIG_NAME: node_name(i)} for i in range(num_nodes)}


def node_identity(node_config: Mapping[str, Any]) -> tuple[Identity, Roster] | None:
    """This node's identity and roster: from its node config, else from the run's
    roster directory in :data:`ROSTER_DIR_ENV` by ``partition-id``; ``None`` if neither.

    Raises
    ------
    ConfigError
        If the node config sets only some roster keys, or a file is invalid.
    """
    found = identity_from_node_config(node_config)
    if found is not None:
        return found
    directory = os.environ.get(ROSTER_DIR_ENV, "")
    partition = node_config.get("partition-id")
    if not directory or partition is None:
        return None
    name = node_name(int(partition))
    root = Path(directory)
    return identity_from_node_config({
        NODE_CONFIG_ROSTER: str(root / "roster.json"),
        NODE_CONFIG_IDENTITY: str(root / "identities" / f"{name}.pem"),
        NODE_CONFIG_NAME: name,
    })
