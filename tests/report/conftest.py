"""Run directories written by the real :class:`RunRecorder`, without training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomli_w

from securefed.config import ExperimentConfig
from securefed.report.recorder import RunRecorder
from strategies.round_stats import TrainRoundStats


def fabricate_run(run_dir: Path, *, rounds: int = 2, accuracies: list[float] | None = None,
                  epsilons: list[float] | None = None, user_epsilons: list[float] | None = None,
                  leakage: Any = None, **tables: dict[str, Any]) -> Path:
    """Write ``config.toml``, ``metrics.jsonl`` and ``summary.json`` of a ``rounds``-round run.

    ``accuracies`` has one value per round from 0; ``epsilons`` / ``user_epsilons`` one
    per trained round (sample-level ledger rows of node 7, user-level rows).
    """
    tree: dict[str, dict[str, Any]] = {
        "experiment": {"name": run_dir.name, "out_dir": str(run_dir)},
        "data": {"num_clients": 4}, "federation": {"rounds": rounds, "clients_per_round": 2},
    }
    for table, values in tables.items():
        tree.setdefault(table, {}).update(values)
    config = ExperimentConfig.from_dict(tree)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(tomli_w.dumps(config.to_dict()))
    accuracies = accuracies or [0.2 + 0.3 * r / rounds for r in range(rounds + 1)]
    rec = RunRecorder(run_dir)
    rec.on_central_eval(0, accuracies[0], 1.6)
    for r in range(1, rounds + 1):
        rec.on_train_round(TrainRoundStats(
            server_round=r, sampled=[7, 9], accepted=[7], rejected={9: "bad | reply, 'x'"},
            bytes_up={7: 1000 * r}, bytes_down_per_client=2000, metrics={"train-loss": 1.0 / r},
            seconds=0.5, extra={"survivors": {"share-keys": 2}}))
        if epsilons:
            rec.on_client_metrics(r, 7, {"dp-epsilon": epsilons[r - 1], "dp-delta": 1e-5})
        if user_epsilons:
            rec.on_user_privacy(r, {"user_epsilon": user_epsilons[r - 1], "user_delta": 1e-5})
        rec.on_central_eval(r, accuracies[r], 1.6 - 0.1 * r)
    rec.summary(status="completed", method=config.method.name, backbone=config.model.backbone,
                dataset=config.data.dataset, rounds=rounds, secure_mode=config.secure.mode,
                **rec.privacy_facts())
    if leakage is not None:
        (run_dir / "leakage.json").write_text(
            leakage if isinstance(leakage, str) else json.dumps(leakage))
    return run_dir
