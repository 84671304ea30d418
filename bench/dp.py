"""Cost of sample-level DP-SGD per tuning method on MiniLM-L6: step time and memory.

For every DP-capable method, one child process per cell trains the real all-MiniLM-L6-v2
classifier on BBC News (batch 16, sequence 64, AdamW, 2 torch threads) either without DP
(``plain``: ``securefed.training``'s loop on fixed batches of 16) or with DP-SGD
(``dp-hooks`` / ``dp-ghost``: :func:`securefed.privacy.dpsgd.train_private` with
Opacus per-sample gradients, or with ghost clipping, Poisson sampling with q = 16 / 160
so the expected batch is 16, CSPRNG noise). A cell reports the mean seconds per step
of one call of ``--steps`` steps after a warm-up call (optimizer and Opacus set-up
amortised alike), and its memory;
``--repeats`` cells per mode run interleaved and the medians are reported:
the process's peak RSS, and the training increment (peak minus the RSS after the model
and data were loaded). Cells of one method run back to back, rotating the order per
repeat, so that ratios compare like with like on this noisy machine.

Goal (issue 4): ``lora`` and ``bitfit`` with DP within 1.3x the time and memory of the
non-private step, in hooks and in ghost mode.

Run: ``.venv/bin/python bench/dp.py`` (writes ``bench/results/dp.json`` and the ``dp``
section of ``bench/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import _common

__all__ = ["METHODS", "MODES", "main", "run_cell"]

#: Method name -> its parameters; every method DP-SGD supports on a text backbone.
METHODS: dict[str, dict[str, Any]] = {
    "lora": {"r": 8}, "ffa-lora": {"r": 8}, "federa": {"r": 8}, "bitfit": {},
    "head": {}, "adapter": {}, "prefix": {}, "full": {"freeze_embeddings": True},
}
MODES = ("plain", "dp-hooks", "dp-ghost")
GOAL_METHODS, GOAL_RATIO = ("lora", "bitfit"), 1.3
BATCH, SEQ, POOL = 16, 64, 160
SECTION = "dp"


def _rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def run_cell(method: str, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    """Train ``method`` for ``warmup + steps`` steps in ``mode``; time and memory."""
    import torch

    from securefed.data import encode_split, load_dataset
    from securefed.methods import create_method
    from securefed.models import build_classifier, load_preprocessor, resolve_backbone
    from securefed.privacy.dpsgd import train_private
    from securefed.privacy.noise import SecureSource
    from securefed.training import train_local

    torch.set_num_threads(2)
    torch.manual_seed(0)
    backbone = resolve_backbone("minilm-l6")
    data = load_dataset("bbc-news", seed=0)
    split = encode_split(data, "train", load_preprocessor(backbone), max_length=SEQ,
                         indices=list(range(POOL)))
    model = create_method(method, **METHODS[method]).apply(
        build_classifier(backbone, len(data.label_names), seed=0), backbone.architecture,
        seed=0)
    baseline = _rss_gb()

    def train(count: int, offset: int) -> float:
        start = time.perf_counter()
        if mode == "plain":
            gens = (torch.Generator().manual_seed(offset + i) for i in range(count))
            batches = [next(iter(split.batches(BATCH, shuffle=True, generator=g)))
                       for g in gens]
            start = time.perf_counter()
            train_local(model, batches, lr=1e-3)
        else:
            train_private(model, split.inputs, split.labels, lr=1e-3, noise_multiplier=1.0,
                          max_grad_norm=1.0, expected_batch_size=BATCH, steps=count,
                          source=SecureSource(), clipping=mode.removeprefix("dp-"))
        return (time.perf_counter() - start) / count

    if warmup:
        train(warmup, 0)
    seconds = train(steps, warmup)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return {"method": method, "mode": mode, "step_seconds": seconds,
            "peak_rss_gb": peak, "train_rss_gb": max(0.0, peak - baseline),
            "steps": steps}


def _child(method: str, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", method, mode,
           "--steps", str(steps), "--warmup", str(warmup)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _median_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Median time and memory over repeated cells, with every run kept."""
    out = dict(cells[0])
    for key in ("step_seconds", "peak_rss_gb", "train_rss_gb"):
        out[key] = statistics.median(c[key] for c in cells)
    out["runs"] = [{k: c[k] for k in ("step_seconds", "peak_rss_gb", "train_rss_gb")}
                   for c in cells]
    return out


def _ratios(plain: dict[str, Any], dp: dict[str, Any]) -> tuple[float, float | None]:
    t = dp["step_seconds"] / plain["step_seconds"]
    m = dp["train_rss_gb"] / plain["train_rss_gb"] if plain["train_rss_gb"] else None
    return t, m


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _markdown(report: dict[str, Any]) -> str:
    rows, goal_rows = [], []
    for method, cells in report["methods"].items():
        plain = cells["plain"]
        row = [method, f"{plain['step_seconds']:.3f}", f"{plain['train_rss_gb']:.3f}"]
        for mode in MODES[1:]:
            dp = cells[mode]
            t_ratio, m_ratio = _ratios(plain, dp)
            row += [f"{dp['step_seconds']:.3f}", _x(t_ratio), f"{dp['train_rss_gb']:.3f}",
                    _x(m_ratio)]
            if method in GOAL_METHODS:
                ok = t_ratio <= GOAL_RATIO and (m_ratio or 0) <= GOAL_RATIO
                goal_rows.append([method, mode, _x(t_ratio), _x(m_ratio),
                                  "pass" if ok else "**FAIL**"])
        rows.append(row)
    cfg = report["config"]
    lines = [
        "### DP-SGD cost per method (`bench/dp.py`)", "",
        f"all-MiniLM-L6-v2 on BBC News, batch {cfg['batch']}, sequence {cfg['seq']}, AdamW, "
        "2 torch threads, one process per cell. *plain*: the non-private loop; *hooks*: "
        "`train_private(clipping=\"hooks\")` (Opacus per-sample gradients); *ghost*: "
        "`train_private(clipping=\"ghost\")` (Opacus ghost clipping: per-sample gradient "
        "norms and a second backward pass); `hooks` is the `[dp] clipping` default; both "
        f"with clipping C = 1, sigma = 1, Poisson sampling with expected batch {cfg['batch']}, "
        f"CSPRNG noise. Per cell: the mean over one call of {cfg['steps']} steps after a warm-up "
        f"call of {cfg['warmup']}; the table shows the median of {cfg.get('repeats', 1)} "
        "cells per mode, run interleaved in rotating order. *training GB*: peak RSS minus "
        "the RSS after loading model and data (what training adds; peak RSS is in the "
        "JSON).", "",
        _common.markdown_table(
            ["method", "plain s/step", "plain training GB", "hooks s/step", "time ×",
             "hooks training GB", "memory ×", "ghost s/step", "time ×",
             "ghost training GB", "memory ×"], rows, "lrrrrrrrrrr"), "",
        f"Goal: `lora` and `bitfit` within {GOAL_RATIO}x time and training memory:", "",
        _common.markdown_table(["method", "mode", "time ×", "memory ×", "goal"], goal_rows,
                               "llrrl"),
        "", _common.footer(report["machine"]),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="cells per (method, mode), interleaved; medians are reported")
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR / "dp.json")
    parser.add_argument("--readme", type=Path, default=_common.README_PATH)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--cell", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(args.cell[0], args.cell[1], args.steps, args.warmup)))
        return 0
    report: dict[str, Any] = {
        "benchmark": "dp", "machine": _common.machine_info(),
        "config": {"batch": BATCH, "seq": SEQ, "pool": POOL, "steps": args.steps,
                   "repeats": args.repeats,
                   "warmup": args.warmup, "backbone": "minilm-l6", "dataset": "bbc-news"},
        "methods": {}}
    for method in args.methods:
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for r in range(args.repeats):
            for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:  # rotate order
                print(f"measuring {method} {mode} ({r + 1}/{args.repeats})", file=sys.stderr)
                runs[mode].append(_child(method, mode, args.steps, args.warmup))
        report["methods"][method] = {mode: _median_cell(cells) for mode, cells in runs.items()}
    _common.publish(SECTION, report, _markdown(report), args.out,
                    None if args.no_readme else args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
