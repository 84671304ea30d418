"""Config builders for app-level tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from securefed.config import ExperimentConfig


def tiny_config(backbone: Path, out: Path, *, dataset: str = "bbc-news", method_name: str = "lora",
                rounds: int = 2, num_clients: int = 3, per_round: int = 2,
                **tables: dict[str, Any]) -> ExperimentConfig:
    """A few-second experiment on a tiny backbone and a small stratified subsample."""
    tree: dict[str, dict[str, Any]] = {
        "experiment": {"name": "t", "seed": 0, "out_dir": str(out)},
        "model": {"backbone": str(backbone), "max_length": 32, "image_size": 32},
        "data": {"dataset": dataset, "max_train": 60, "max_test": 30,
                 "num_clients": num_clients, "alpha": 1.0, "partitioner": "dirichlet"},
        "method": {"name": method_name},
        "federation": {"rounds": rounds, "clients_per_round": per_round,
                       "evaluate_clients": per_round},
        "train": {"batch_size": 8, "lr": 5e-3},
    }
    private = "dp" in tables or "user_dp" in tables or (
        tables.get("secure", {}).get("mode", "none") != "none")
    if private:  # clients' evaluation metrics may not leave them (docs/privacy.md)
        tree["federation"]["evaluate_clients"] = 0
    for table, values in tables.items():
        tree.setdefault(table, {}).update(values)
    return ExperimentConfig.from_dict(tree)
