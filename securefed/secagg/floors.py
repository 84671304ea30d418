"""A node's own floors for the SecAgg+ parameters a server proposes.

The server chooses ``n``, ``k``, ``t``, ``bits`` and the clipping range of each round;
a server that deviates could propose ``n = 2, k = 1, t = 1`` (one neighbour holding all
of a client's shares) or a range that loosens the sensitivity bound a node relies on.
Each node therefore checks the setup against floors from **its own** config (Flower
``context.node_config``, next to the roster keys of :mod:`securefed.roster`) and refuses
a setup below any of them with :class:`~securefed.secagg.errors.FloorError` naming the
floor (Bonawitz et al. 2017, CCS, Sec. 6: clients abort when the server's parameters
would break the threshold assumptions; Bell et al. 2020, arXiv:2009.05807).

Node config keys (:data:`NODE_CONFIG_FLOORS`)::

    securefed-secagg-min-clients = 3      n >= this
    securefed-secagg-min-degree = 2       k >= this
    securefed-secagg-min-threshold = 2    t >= this
    securefed-secagg-min-bits = 16        bits >= this
    securefed-secagg-max-clipping-range = inf   c <= this

See ``docs/threat-model.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from securefed.exceptions import ConfigError
from securefed.secagg.errors import FloorError
from securefed.secagg.messages import SecAggConfig

__all__ = ["NODE_CONFIG_FLOORS", "SecAggFloors"]

NODE_CONFIG_FLOORS = {
    "min_clients": "securefed-secagg-min-clients",
    "min_degree": "securefed-secagg-min-degree",
    "min_threshold": "securefed-secagg-min-threshold",
    "min_bits": "securefed-secagg-min-bits",
    "max_clipping_range": "securefed-secagg-max-clipping-range",
}
"""Field of :class:`SecAggFloors` -> its Flower node-config key."""


@dataclass(frozen=True)
class SecAggFloors:
    """The least a node accepts: ``n``, ``k``, ``t``, ``bits`` and the largest range.

    Parameters
    ----------
    min_clients, min_degree, min_threshold, min_bits : int
        Lower bounds on ``n`` (>= 3), ``k`` (>= 2), ``t`` (>= 2) and ``bits`` (>= 1).
    max_clipping_range : float
        Upper bound on the clipping range ``c`` (> 0; ``inf`` for none).

    Raises
    ------
    ConfigError
        If a floor is itself below the minimum that makes sense (e.g. ``t = 1``, where
        one neighbour would hold a client's secret alone).
    """

    min_clients: int = 3
    min_degree: int = 2
    min_threshold: int = 2
    min_bits: int = 16
    max_clipping_range: float = math.inf

    def __post_init__(self) -> None:
        for name, low in (("min_clients", 3), ("min_degree", 2), ("min_threshold", 2),
                          ("min_bits", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"SecAgg+ floor {name} must be an int >= {low}, got "
                                  f"{value!r}")
        c = self.max_clipping_range
        if isinstance(c, bool) or not isinstance(c, int | float) or not c > 0:
            raise ConfigError(f"SecAgg+ floor max_clipping_range must be > 0, got {c!r}")

    def check(self, config: SecAggConfig) -> None:
        """Refuse a config below any floor.

        Raises
        ------
        FloorError
            Naming the parameter, the value the server proposed, the floor and its
            node-config key.
        """
        proposed = {"min_clients": config.num_clients, "min_degree": config.graph.degree,
                    "min_threshold": config.graph.threshold, "min_bits": config.bits}
        for name, value in proposed.items():
            floor = getattr(self, name)
            if value < floor:
                raise FloorError(
                    f"server proposed {name[4:]} = {value}, below this node's floor "
                    f"{name} = {floor} (node config {NODE_CONFIG_FLOORS[name]!r}); refused")
        c = config.quantization.clipping_range
        if c > self.max_clipping_range:
            raise FloorError(
                f"server proposed clipping_range = {c:g}, above this node's "
                f"max_clipping_range = {self.max_clipping_range:g} (node config "
                f"{NODE_CONFIG_FLOORS['max_clipping_range']!r}); refused")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SecAggFloors:
        """Floors from Flower node config; unset keys keep the defaults.

        Raises
        ------
        ConfigError
            If a value is not a number of the right kind.
        """
        values: dict[str, Any] = {}
        kinds = {f.name: f.type for f in fields(cls)}
        for name, key in NODE_CONFIG_FLOORS.items():
            raw = node_config.get(key)
            if raw is None or raw == "":
                continue
            try:
                values[name] = float(raw) if kinds[name] == "float" else int(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"node config {key!r} = {raw!r} is not a number") from None
        return cls(**values)
