"""``bench/privacy_utility.py``: cell configs, resumption and the seed-paired report.

A whole cell is a 2-3 minute federated run, so these tests exercise the runner's
resumable path: stored ``summary.json`` / ``privacy.jsonl`` files are read, aggregated
over seeds and published, exactly as after a real sweep.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from bench import privacy_utility as pu
from securefed.config import ExperimentConfig

ARGS = ["--rounds", "4", "--batch-size", "64", "--lr", "0.01"]


def _args(out_dir: Path) -> argparse.Namespace:
    return argparse.Namespace(num_clients=10, clients_per_round=5, alpha=0.5, rounds=4,
                              local_epochs=1, lr=0.01, batch_size=64, clip=1.0, delta=1e-5,
                              accountant="rdp", out_dir=out_dir)


@pytest.mark.parametrize("method", list(pu.METHODS))
@pytest.mark.parametrize("epsilon", [1.0, math.inf])
def test_every_cell_is_a_valid_experiment(method: str, epsilon: float, tmp_path) -> None:
    tree = pu._cell_config(_args(tmp_path), method, epsilon, seed=3)
    config = ExperimentConfig.from_dict(tree)
    assert config.method.name == method and config.experiment.seed == 3
    assert config.data.num_clients == 10 and config.data.alpha == 0.5
    assert config.dp.enabled is math.isfinite(epsilon)
    if math.isfinite(epsilon):
        assert config.dp.target_epsilon == epsilon and config.dp.accountant == "rdp"


def _store(out_dir: Path, seed: int, method: str, eps: float, acc: float) -> None:
    tag = f"n10-k5-a0.5-r4-e1-b64-lr0.01-c1-rdp-d1e-05-s{seed}"
    label = "inf" if math.isinf(eps) else f"{eps:g}"
    run = out_dir / tag / f"{method}-eps{label}"
    run.mkdir(parents=True)
    private = math.isfinite(eps)
    (run / "summary.json").write_text(json.dumps({
        "status": "completed", "final_accuracy": acc,
        "epsilon": eps * 0.99 if private else None, "delta": 1e-5 if private else None}))
    if private:
        (run / "privacy.jsonl").write_text("\n".join(json.dumps(
            {"round": r, "noise_multiplier": 1.0 + r / 10}) for r in (1, 2)) + "\n")


def test_stored_cells_are_read_paired_by_seed_and_published(tmp_path) -> None:
    accs = {  # (seed, method, eps) -> accuracy
        (0, "lora", 1.0): 0.40, (0, "lora", math.inf): 0.90,
        (0, "ffa-lora", 1.0): 0.50, (0, "ffa-lora", math.inf): 0.88,
        (1, "lora", 1.0): 0.30, (1, "lora", math.inf): 0.80,
        (1, "ffa-lora", 1.0): 0.20, (1, "ffa-lora", math.inf): 0.86,
    }
    for (seed, method, eps), acc in accs.items():
        _store(tmp_path / "runs", seed, method, eps, acc)
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n", encoding="utf-8")
    out = tmp_path / "pu.json"
    assert pu.main([*ARGS, "--methods", "lora", "ffa-lora", "--epsilons", "1", "inf",
                    "--seeds", "0", "1", "--out-dir", str(tmp_path / "runs"),
                    "--out", str(out), "--readme", str(readme)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert len(report["rows"]) == 8 and report["config"]["seeds"] == [0, 1]
    row = next(r for r in report["rows"]
               if (r["seed"], r["method"], r["target_epsilon"]) == (1, "lora", 1.0))
    assert row["final_accuracy"] == 0.30 and row["noise_multiplier_max"] == pytest.approx(1.2)
    assert row["seconds"] is None  # read, not run
    # LoRA drops 50 points on both seeds; FFA-LoRA 38 and 66 (paired by seed).
    assert ("LoRA loses 50.0 points, FFA-LoRA 52.0 (FFA-LoRA loses less in 1 of 2 seed(s); "
            "its private accuracy is the higher in 1)") in report["ffa_vs_lora"]
    text = readme.read_text(encoding="utf-8")
    assert "| lora | 0.350 ± 0.071 | 0.850 ± 0.071 | 50.0 ± 0.0 |" in text
    assert "Mean ± standard deviation over seeds 0, 1" in text


def test_a_missing_cell_is_a_dash_not_a_number() -> None:
    rows = [{"method": "lora", "seed": 0, "target_epsilon": None, "final_accuracy": 0.9}]
    assert pu._drops(rows, "lora", 1.0) == []
    assert pu._mean_std([]) == "—"
    assert pu._verdict(rows) == ""
