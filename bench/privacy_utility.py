"""Privacy–utility points: final accuracy against sample-level epsilon per method.

Federated fine-tuning of the real all-MiniLM-L6-v2 on BBC News (5 topics), 10 clients
split by a Dirichlet(0.5) label partition, 5 clients a round. Every cell is a whole
federated run through the securefed ServerApp and ClientApp code (in-process grid, so
no Ray start-up per cell); with ``epsilon < inf`` every client trains with DP-SGD
(Abadi et al. 2016, arXiv:1607.00133: Opacus per-sample clipping at C = ``--clip``,
Poisson sampling), its noise multiplier calibrated so that ``rounds`` rounds of its
local steps stay within (epsilon, delta) under the named accountant, and each client's
own accountant charges only the rounds it took part in. ``epsilon = inf`` is the
non-private run with the same hyper-parameters. The reported epsilon is the largest
sample-level epsilon any client reached (``summary.json``). Every cell runs once per
seed (``--seeds``); the table gives mean ± standard deviation, and the FFA-LoRA/LoRA
comparison pairs runs by seed (same partition, sampling and noise stream).

The question it answers (FFA-LoRA, Sun et al. 2024, arXiv:2403.12313): does freezing
LoRA's ``A`` make LoRA degrade less under DP noise?

Cells are resumable: a cell whose ``summary.json`` exists under
``--out-dir/<hyper-parameter tag>/`` is read, not rerun. Run::

    .venv/bin/python bench/privacy_utility.py   # 16 cells x 3 seeds (~110 min on 2 cores)

Writes ``bench/results/privacy_utility.json`` and the ``privacy_utility`` section of
``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import _common

__all__ = ["METHODS", "base_config", "main"]

SECTION = "privacy_utility"
METHODS: dict[str, dict[str, Any]] = {
    "lora": {"r": 8, "alpha": 16}, "ffa-lora": {"r": 8, "alpha": 16},
    "bitfit": {}, "federa": {"r": 8, "alpha": 16},
}
EPSILONS = (1.0, 3.0, 8.0, math.inf)


def base_config(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The experiment every cell shares (the quickstart, shortened for 16 cells)."""
    return {
        "experiment": {"name": "privacy-utility", "seed": seed},
        "model": {"backbone": "minilm-l6", "max_length": 64},
        "data": {"dataset": "bbc-news", "test_fraction": 0.2, "partitioner": "dirichlet",
                 "num_clients": args.num_clients, "alpha": args.alpha, "val_fraction": 0.1},
        "federation": {"rounds": args.rounds, "clients_per_round": args.clients_per_round,
                       "min_replies": args.clients_per_round,
                       "evaluate_clients": 0, "central_eval": True},
        "train": {"local_epochs": args.local_epochs, "batch_size": args.batch_size,
                  "eval_batch_size": 64, "lr": args.lr},
    }


def _cell_config(args: argparse.Namespace, method: str, epsilon: float,
                 seed: int) -> dict[str, Any]:
    tree = base_config(args, seed)
    tree["method"] = {"name": method, method: METHODS[method]}
    if math.isfinite(epsilon):
        tree["dp"] = {"mode": "sample", "target_epsilon": epsilon, "delta": args.delta,
                      "max_grad_norm": args.clip, "accountant": args.accountant,
                      "randomness": "seeded"}
    return tree


def run_cell(args: argparse.Namespace, method: str, epsilon: float,
             seed: int) -> dict[str, Any]:
    """One federated run (or its stored summary); returns the table row."""
    from securefed.app.launcher import run_inprocess
    from securefed.config import ExperimentConfig

    label = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
    tag = (f"n{args.num_clients}-k{args.clients_per_round}-a{args.alpha:g}-"
           f"r{args.rounds}-e{args.local_epochs}-b{args.batch_size}-lr{args.lr:g}-"
           f"c{args.clip:g}-{args.accountant}-d{args.delta:g}-s{seed}")
    run_dir = args.out_dir / tag / f"{method}-eps{label}"  # resumable per setting
    summary_path = run_dir / "summary.json"
    seconds = None
    if not summary_path.is_file():
        config = ExperimentConfig.from_dict(_cell_config(args, method, epsilon, seed))
        started = time.perf_counter()
        run_inprocess(config, run_dir, overwrite=True)  # an unfinished cell runs again
        seconds = time.perf_counter() - started
        (run_dir / "bench-seconds.json").write_text(json.dumps({"seconds": seconds}))
    elif (run_dir / "bench-seconds.json").is_file():
        seconds = json.loads((run_dir / "bench-seconds.json").read_text())["seconds"]
    summary = json.loads(summary_path.read_text())
    sigmas = [json.loads(line)["noise_multiplier"]
              for line in (run_dir / "privacy.jsonl").read_text().splitlines()
              if line.strip()] if (run_dir / "privacy.jsonl").is_file() else []
    return {"method": method, "seed": seed,
            "target_epsilon": None if math.isinf(epsilon) else epsilon,
            "epsilon": summary.get("epsilon"), "delta": summary.get("delta"),
            "accountant": args.accountant if math.isfinite(epsilon) else None,
            "noise_multiplier_max": max(sigmas) if sigmas else None,
            "final_accuracy": summary.get("final_accuracy"),
            "status": summary.get("status"), "seconds": seconds}


def _accuracies(rows: list[dict[str, Any]], method: str,
                eps: float | None) -> dict[int, float]:
    """Final accuracy of ``method`` at target ``eps`` (None = non-private), by seed."""
    return {r["seed"]: r["final_accuracy"] for r in rows
            if r["method"] == method and r["target_epsilon"] == eps
            and r["final_accuracy"] is not None}


def _mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sample standard deviation`` (just the value for one seed; — for none)."""
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    eps_cols = list(report["config"]["epsilons"])
    head = ["method", *[f"ε = {'∞' if e is None else f'{e:g}'}" for e in eps_cols],
            "drop at ε = 1 (points)"]
    table = []
    for method in report["config"]["methods"]:
        cells = [_mean_std(list(_accuracies(rows, method, e).values())) for e in eps_cols]
        drops = _drops(rows, method, 1.0)
        table.append([method, *cells, _mean_std([100 * d for d in drops], digits=1)])
    c = report["config"]
    seeds = c["seeds"]
    return "\n".join([
        "### Privacy–utility on BBC News (`bench/privacy_utility.py`)", "",
        f"Final held-out accuracy after {c['rounds']} rounds ({c['num_clients']} clients, "
        f"Dirichlet {c['dirichlet_alpha']:g}, {c['clients_per_round']} a round, "
        f"{c['local_epochs']} local epoch(s), batch {c['batch_size']}, AdamW lr "
        f"{c['lr']:g}), sample-level DP-SGD at C = {c['clip']:g}, delta = {c['delta']:g}, "
        f"accountant `{c['accountant']}`; ε is the target each client's sigma was "
        "calibrated to (the largest ε any client reached is in the JSON). "
        f"{'Mean ± standard deviation over' if len(seeds) > 1 else 'One run,'} "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} (the seed "
        "sets the partition, the client sampling, the DP noise and the initialisation).",
        "",
        _common.markdown_table(head, table),
        "",
        report.get("ffa_vs_lora", ""),
        "",
        _common.footer(report["machine"]),
    ])


def _drops(rows: list[dict[str, Any]], method: str, eps: float) -> list[float]:
    """Per-seed accuracy lost from the non-private run of the same seed."""
    base, private = _accuracies(rows, method, None), _accuracies(rows, method, eps)
    return [base[s] - private[s] for s in sorted(base.keys() & private.keys())]


def _verdict(rows: list[dict[str, Any]]) -> str:
    """Does FFA-LoRA lose fewer points than LoRA (paired by seed)?"""
    parts = []
    for eps in (1.0, 3.0, 8.0):
        lora, ffa = _drops(rows, "lora", eps), _drops(rows, "ffa-lora", eps)
        if not lora or not ffa or len(lora) != len(ffa):
            continue
        wins = sum(f < lo for f, lo in zip(ffa, lora, strict=True))
        plain_lora, plain_ffa = _accuracies(rows, "lora", eps), _accuracies(rows, "ffa-lora",
                                                                            eps)
        higher = sum(plain_ffa[s] > plain_lora[s] for s in plain_ffa.keys() & plain_lora.keys())
        parts.append(f"ε = {eps:g}: LoRA loses {100 * statistics.fmean(lora):.1f} points, "
                     f"FFA-LoRA {100 * statistics.fmean(ffa):.1f} (FFA-LoRA loses less in "
                     f"{wins} of {len(ffa)} seed(s); its private accuracy is the higher in "
                     f"{higher})")
    if not parts:
        return ""
    return ("Degradation from each method's own non-private run, paired by seed: "
            + "; ".join(parts) + ".")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epsilons", nargs="+", type=float, default=list(EPSILONS))
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--clients-per-round", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="Dirichlet concentration of the label partition")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=64,
                        help="local batch size (the expected Poisson batch under DP)")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--accountant", default="rdp")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out-dir", type=Path, default=_common.ROOT / "runs" / "privacy-utility")
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR / "privacy_utility.json")
    parser.add_argument("--readme", type=Path, default=_common.README_PATH)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            for eps in args.epsilons:
                print(f"cell {method} epsilon={eps:g} seed={seed}", file=sys.stderr,
                      flush=True)
                rows.append(run_cell(args, method, eps, seed))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "benchmark": SECTION, "machine": _common.machine_info(),
        "config": {"methods": args.methods,
                   "epsilons": [None if math.isinf(e) else e for e in args.epsilons],
                   "rounds": args.rounds, "local_epochs": args.local_epochs, "lr": args.lr,
                   "batch_size": args.batch_size,
                   "clip": args.clip, "delta": args.delta, "accountant": args.accountant,
                   "seeds": args.seeds, "backbone": "minilm-l6", "dataset": "bbc-news",
                   "num_clients": args.num_clients, "dirichlet_alpha": args.alpha,
                   "clients_per_round": args.clients_per_round},
        "rows": rows}
    report["ffa_vs_lora"] = _verdict(rows)
    _common.publish(SECTION, report, _markdown(report), args.out,
                    None if args.no_readme else args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
