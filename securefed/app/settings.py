"""Reading the experiment config and node identity out of a Flower ``Context``.

Flower hands both apps a flat ``run_config``. securefed accepts two forms:

* ``config-file = "/abs/path/config.toml"`` — a whole securefed config, written by
  ``securefed run`` into the run directory (every other dotted key is then ignored);
* dotted keys ``"table.key" = value`` — the defaults in ``pyproject.toml``'s
  ``[tool.flwr.app.config]``, so that a plain ``flwr run .`` works.

``run-dir`` (optional) overrides ``[experiment] out_dir`` for the ServerApp's outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context

from securefed.config import ExperimentConfig, from_flat, load_config
from securefed.exceptions import ConfigError

__all__ = ["CONFIG_FILE_KEY", "RUN_DIR_KEY", "config_from_run_config", "partition_id_of",
           "run_dir_of"]

CONFIG_FILE_KEY = "config-file"
RUN_DIR_KEY = "run-dir"
_RESERVED = {CONFIG_FILE_KEY, RUN_DIR_KEY}


def config_from_run_config(run_config: Mapping[str, Any]) -> ExperimentConfig:
    """The :class:`ExperimentConfig` a Flower ``run_config`` describes."""
    path = str(run_config.get(CONFIG_FILE_KEY, "") or "")
    if path:
        return load_config(path)
    unknown = [k for k in run_config if k not in _RESERVED and "." not in k]
    if unknown:
        raise ConfigError(
            f"unknown run-config keys {unknown}; use 'table.key' keys or "
            f"'{CONFIG_FILE_KEY}'"
        )
    return from_flat({k: v for k, v in run_config.items() if k not in _RESERVED})


def run_dir_of(run_config: Mapping[str, Any], config: ExperimentConfig) -> Path:
    """Where the ServerApp writes its outputs."""
    return Path(str(run_config.get(RUN_DIR_KEY, "") or config.experiment.out_dir)).resolve()


def partition_id_of(context: Context) -> int:
    """The data partition a node serves (``node_config["partition-id"]``)."""
    try:
        return int(context.node_config["partition-id"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            "node_config lacks an integer 'partition-id'; start SuperNodes with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        ) from None
