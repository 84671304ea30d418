"""The ``[resources]`` table: what each virtual client reserves on Flower's simulation engine.

::

    [resources]
    client_cpus = 2      # CPUs Ray reserves per virtual client (client-resources-num-cpus);
                         # clients running at once = machine CPUs // client_cpus
    client_gpus = 0.0    # GPUs per virtual client (client-resources-num-gpus); a
                         # fraction (0.25) lets several clients share one GPU

``securefed run --num-cpus N --num-gpus G`` override both. Only the simulation engine
reads them (``--engine inprocess`` runs every client in one process). The checks that
depend on the machine (at least ``client_cpus`` CPUs, a CUDA device when
``client_gpus > 0``) run in :func:`securefed.app.check.check_config`, before any Flower
process starts, so a config written on one machine still loads on another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securefed.config_check import require

__all__ = ["ResourcesConfig"]


@dataclass(frozen=True)
class ResourcesConfig:
    """``[resources]``: Ray resources per virtual client (see the module docstring)."""

    client_cpus: int = 2
    client_gpus: float = 0.0

    def __post_init__(self) -> None:
        require(self.client_cpus >= 1, "resources", "client_cpus", self.client_cpus,
                "must be >= 1 (--num-cpus): Ray runs one client actor per client_cpus CPUs")
        require(math.isfinite(self.client_gpus) and self.client_gpus >= 0, "resources",
                "client_gpus", self.client_gpus,
                "must be a finite number >= 0 (--num-gpus; 0 = CPU-only clients)")
