"""Node configs of simulation and in-process runs: a roster and each node's own settings.

A deployment gives every SuperNode its own config (``flower-supernode --node-config``):
its roster identity (:mod:`securefed.roster`) and, under CKKS, the authority policy
(:class:`securefed.he.AuthorityPolicy`). Simulation and in-process runs stand in for a
deployment, so :func:`prepare_node_configs` derives the same entries from the
experiment config, on the launcher's side, before any server code runs:

* a fresh roster of ``node-<partition id>`` members (:func:`securefed.roster.generate_roster`)
  under ``<run dir>/nodes``;
* under ``[secure] mode = "ckks"``: ``node-0`` is the key authority; ``min_terms`` is
  ``max(2, required replies)``, ``max_abs`` is ``max(clipping_range, 1)``, and the
  flooding bits and key rotation come from ``[secure]``.

In-process runs hand the configs to :class:`securefed.app.grid.InProcessGrid`. Flower's
simulation engine sets only ``partition-id`` and ``num-partitions``, so the launcher
names the folder in the environment variable :data:`NODE_CONFIG_DIR_ENV` of the Flower
processes it starts, and :func:`node_config_of` reads ``node-<partition id>.json`` from it.
The server cannot set a SuperNode's environment, so nothing here is server-controlled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import Context

from securefed.config import ExperimentConfig
from securefed.exceptions import ConfigError
from securefed.roster import (
    NODE_CONFIG_IDENTITY,
    NODE_CONFIG_NAME,
    NODE_CONFIG_ROSTER,
    generate_roster,
)

if TYPE_CHECKING:
    from securefed.he.authority import AuthorityPolicy

__all__ = ["NODE_CONFIG_DIR_ENV", "needs_roster", "node_config_of", "node_name",
           "prepare_node_configs", "provision_roster"]

NODE_CONFIG_DIR_ENV = "SECUREFED_NODE_CONFIG_DIR"


def node_name(partition_id: int) -> str:
    """The roster name of the node serving ``partition_id`` in a generated roster."""
    return f"node-{int(partition_id)}"


def ckks_policy(config: ExperimentConfig) -> AuthorityPolicy:
    """The authority policy a simulated deployment of ``config`` gives its nodes."""
    from securefed.he.authority import AuthorityPolicy

    s = config.secure
    return AuthorityPolicy(authority=node_name(0), key_role=s.key_role,
                           min_terms=max(2, config.federation.required_replies),
                           max_abs=max(s.clipping_range, 1.0),
                           flooding_bits=s.ckks_flooding_bits,
                           rotation_rounds=s.ckks_key_rotation_rounds)


def needs_roster(config: ExperimentConfig) -> bool:
    """Whether ``config``'s nodes need roster identities: CKKS, or malicious SecAgg+.

    A semi-honest SecAgg+ node must have none: a node with a roster refuses semi-honest
    rounds (no downgrade, ``docs/secure-aggregation.md``).
    """
    s = config.secure
    return s.mode == "ckks" or (s.mode == "secagg" and s.adversary == "malicious")


def provision_roster(folder: Path, num_nodes: int,
                     extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Generate a roster of ``node-<i>`` members under ``folder``; write each node's config.

    Returns one node config per partition (index = partition id) with ``partition-id``,
    ``num-partitions``, the three roster keys and ``extra``; each is also written to
    ``folder/node-<i>.json``, where :func:`node_config_of` finds it in simulation.
    """
    if num_nodes < 1:
        raise ConfigError(f"num_nodes must be >= 1, got {num_nodes}")
    folder = Path(folder)
    _, paths = generate_roster([node_name(i) for i in range(num_nodes)], folder)
    configs = []
    for i in range(num_nodes):
        entry = {"partition-id": i, "num-partitions": num_nodes,
                 NODE_CONFIG_ROSTER: str(folder / "roster.json"),
                 NODE_CONFIG_IDENTITY: str(paths[node_name(i)]),
                 NODE_CONFIG_NAME: node_name(i), **(extra or {})}
        (folder / f"node-{i}.json").write_text(json.dumps(entry, sort_keys=True) + "\n")
        configs.append(entry)
    return configs


def prepare_node_configs(config: ExperimentConfig, run_dir: Path) -> list[dict[str, Any]]:
    """Write the roster and each node's config under ``run_dir/nodes``; return them.

    Returns one node config per partition (index = partition id), each with
    ``partition-id`` and ``num-partitions``; the roster entries (and, under CKKS, the
    authority policy) are added when :func:`needs_roster`.
    """
    n = config.data.num_clients
    if not needs_roster(config):
        return [{"partition-id": i, "num-partitions": n} for i in range(n)]
    policy = ckks_policy(config).to_node_config() if config.secure.mode == "ckks" else {}
    return provision_roster(Path(run_dir) / "nodes", n, policy)


def node_config_of(context: Context) -> Mapping[str, Any]:
    """The node's config: ``context.node_config``, completed in simulation from
    :data:`NODE_CONFIG_DIR_ENV` when it names no roster itself."""
    own = dict(context.node_config)
    folder = os.environ.get(NODE_CONFIG_DIR_ENV, "")
    if own.get(NODE_CONFIG_ROSTER) or not folder:
        return own
    path = Path(folder) / f"node-{own.get('partition-id')}.json"
    try:
        extra = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{NODE_CONFIG_DIR_ENV} names {folder!r}, but {path.name} cannot "
                          f"be read: {exc}") from None
    return {**extra, **own}
