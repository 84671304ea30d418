"""Time, peak memory and accuracy of ``make demo`` (the quickstart experiment).

Runs ``securefed run configs/quickstart.toml`` as a child process (Flower's simulation
engine, as ``make demo`` does) and samples, every 0.25 s, the summed resident memory of
the whole process tree: the CLI, the SuperLink, SuperExec, the simulation runtime and
every Ray worker. Summing RSS counts pages shared between processes once per process,
so the figure is an upper bound on the memory the run needs. Reports wall time, peak
tree RSS, the final held-out accuracy and the per-round curve, and checks the goals
(<= 15 min on 2 cores, < 6 GB, accuracy >= 0.90).

Usage::

    .venv/bin/python bench/demo.py [--config configs/quickstart.toml] [--out runs/bench-demo]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    RESULTS_DIR,
    ROOT,
    machine_info,
    markdown_table,
    update_readme_section,
    write_json,
)

GOALS = {"wall_seconds_max": 15 * 60, "peak_rss_gb_max": 6.0, "final_accuracy_min": 0.90}


class TreeMemory:
    """Samples the summed RSS of a process and all its descendants in a thread."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        if total > self.peak:
            self.peak, self.peak_processes = total, len(procs)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def run_demo(config: Path, out: Path) -> dict[str, Any]:
    """Run the demo command once; return timing, memory and accuracy figures."""
    cli = Path(sys.executable).parent / "securefed"
    cmd = [str(cli), "run", str(config), "--out", str(out), "--overwrite"]  # as make demo
    start = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        with TreeMemory(proc.pid) as mem:
            code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"demo failed with exit code {code}; see {out}.log")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "command": " ".join(["securefed", "run", _rel(config), "--out", _rel(out),
                             "--overwrite"]),
        "wall_seconds": wall,
        "peak_rss_bytes": mem.peak,
        "peak_rss_gb": mem.peak / 1e9,
        "peak_processes": mem.peak_processes,
        "final_accuracy": summary["final_accuracy"],
        "accuracy_per_round": summary["accuracy_per_round"],
        "rounds": summary["rounds"],
        "method": summary["method"],
        "dataset": summary["dataset"],
        "bytes_up_per_client_round": summary["bytes_up_per_client_round"],
        "server_wall_seconds": summary["wall_seconds"],
    }


def render(result: dict[str, Any]) -> str:
    """The Markdown section for ``bench/README.md``."""
    g = result["goals"]
    rows = [
        ["wall time (whole command)", f"{result['wall_seconds'] / 60:.1f} min",
         f"<= {GOALS['wall_seconds_max'] / 60:.0f} min", "pass" if g["wall"] else "FAIL"],
        ["peak memory (process tree RSS)", f"{result['peak_rss_gb']:.2f} GB",
         f"< {GOALS['peak_rss_gb_max']:.0f} GB", "pass" if g["memory"] else "FAIL"],
        ["final accuracy (held-out BBC News)", f"{result['final_accuracy']:.4f}",
         f">= {GOALS['final_accuracy_min']}", "pass" if g["accuracy"] else "FAIL"],
    ]
    curve = ", ".join(f"{a:.3f}" for a in result["accuracy_per_round"])
    m = result["machine"]
    return "\n".join([
        "### `make demo` (`bench/demo.py`)",
        "",
        f"`{result['command']}` — {result['method']} on {result['dataset']}, "
        f"{result['rounds']} rounds, Flower simulation engine; "
        f"{m.get('cpu_count')} CPUs, measured {m.get('date', '')}.",
        "",
        markdown_table(["figure", "measured", "goal", ""], rows, "lrrl"),
        "",
        f"Accuracy by round (round 0 = initial adapter): {curve}.",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-demo")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "demo.json")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = run_demo(args.config.resolve(), args.out.resolve())
    result["machine"] = machine_info()
    result["goals"] = {
        "wall": result["wall_seconds"] <= GOALS["wall_seconds_max"],
        "memory": result["peak_rss_gb"] < GOALS["peak_rss_gb_max"],
        "accuracy": result["final_accuracy"] >= GOALS["final_accuracy_min"],
        **GOALS,
    }
    write_json(args.json, result)
    if not args.no_readme:
        update_readme_section("demo", render(result))
    print(json.dumps({k: result[k] for k in ("wall_seconds", "peak_rss_gb",
                                             "final_accuracy")}, indent=2))
    return 0 if all(result["goals"][k] for k in ("wall", "memory", "accuracy")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
