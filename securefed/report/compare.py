"""Reading run directories back, and comparing several runs.

:func:`load_run` reads what a run wrote (``metrics.jsonl``, ``summary.json``,
``config.toml`` and, when present, ``leakage.json``). :func:`comparison` turns runs into
table rows; :func:`write_comparison` writes them as ``comparison.md`` and
``comparison.csv``; :func:`plot_overlay` draws every run's curves on shared axes.

``leakage.json`` (optional, written into a run directory by an attack evaluation)::

    {"results": [{"attack": "dlg", "metric": "psnr_db", "value": 18.3}, ...]}

Each result names the attack, the metric and its value (a number, or null when the
attack did not finish). The comparison shows them as ``attack metric=value``, joined by
``; ``, and ``—`` for a run without the file.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefed.exceptions import ConfigError
from securefed.report.plots import RunFacts, new_figure, round_axis, save_figure, series
from securefed.report.tables import markdown_table

__all__ = ["COLUMNS", "LEAKAGE_FILE", "RunData", "comparison", "format_cell", "load_run",
           "plot_overlay", "run_labels", "write_comparison"]

LEAKAGE_FILE = "leakage.json"
MISSING = "—"

#: ``(key, header)`` of every comparison column, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("run", "run"),
    ("method", "method"),
    ("backbone", "backbone"),
    ("dataset", "dataset"),
    ("secure", "secure"),
    ("status", "status"),
    ("rounds", "rounds"),
    ("final_accuracy", "final accuracy"),
    ("best_accuracy", "best accuracy"),
    ("bytes_up_per_client_round", "bytes up / client-round"),
    ("epsilon", "ε sample"),
    ("user_epsilon", "ε user"),
    ("wall_seconds", "wall s"),
    ("leakage", "leakage"),
)


@dataclass
class RunData:
    """One run directory, read back.

    Attributes
    ----------
    path : Path
        The run directory.
    rows : list of dict
        ``metrics.jsonl``, one row per round.
    summary, config : dict
        ``summary.json`` and ``config.toml`` (empty when the file is missing).
    facts : RunFacts
        From the config, else from the summary.
    leakage : list of dict or None
        ``leakage.json``'s results, None without the file.
    """

    path: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    facts: RunFacts = field(default_factory=RunFacts)
    leakage: list[dict[str, Any]] | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path} line {number} is not JSON: {exc}") from exc
        if not isinstance(row, dict) or "round" not in row:
            raise ConfigError(f"{path} line {number} is not a metrics row (no 'round')")
        rows.append(row)
    return rows


def _read_leakage(path: Path) -> list[dict[str, Any]]:
    doc = _read_json(path)
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list):
        raise ConfigError(f"{path} must be an object with a 'results' list "
                          '([{"attack": ..., "metric": ..., "value": ...}])')
    for i, r in enumerate(results):
        ok = (isinstance(r, dict) and isinstance(r.get("attack"), str)
              and isinstance(r.get("metric"), str)
              and (r.get("value") is None or isinstance(r.get("value"), int | float)))
        if not ok:
            raise ConfigError(f"{path}: results[{i}] needs a string 'attack', a string "
                              f"'metric' and a numeric (or null) 'value', got {r!r}")
    return results


def load_run(path: Path) -> RunData:
    """Read a run directory.

    Raises
    ------
    ConfigError
        If ``path`` does not exist, is not a directory, holds no ``metrics.jsonl``, or a
        file in it cannot be parsed.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; give a run directory "
                          "(it holds metrics.jsonl, summary.json, config.toml)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"{path} is not a securefed run directory: it has no metrics.jsonl "
                          "(a run directory holds metrics.jsonl, summary.json, config.toml)")
    run = RunData(path=path, rows=_read_rows(metrics))
    if (path / "summary.json").is_file():
        summary = _read_json(path / "summary.json")
        run.summary = summary if isinstance(summary, dict) else {}
    if (path / "config.toml").is_file():
        try:
            run.config = tomllib.loads((path / "config.toml").read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path / 'config.toml'}: {exc}") from exc
    run.facts = (RunFacts.from_config(run.config) if run.config
                 else RunFacts.from_summary(run.summary))
    if (path / LEAKAGE_FILE).is_file():
        run.leakage = _read_leakage(path / LEAKAGE_FILE)
    return run


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """One distinct label per run: its directory name (with parents where names repeat)
    and :meth:`RunFacts.short`."""
    names = [r.path.resolve().name for r in runs]
    if len(set(names)) < len(names):
        names = ["/".join(r.path.resolve().parts[-2:]) for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return [f"{n} ({r.facts.short()})" for n, r in zip(names, runs, strict=True)]


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> Any:
    values = [r[key] for r in rows if r.get(key) is not None]
    return values[-1] if values else None


def _pick(summary: Mapping[str, Any], key: str, fallback: Any) -> Any:
    """``summary[key]`` where it is known (not None, not 0 bytes), else ``fallback``."""
    value = summary.get(key)
    return fallback if value is None or (value == 0 and key.startswith("bytes")) else value


def _row(run: RunData, label: str) -> dict[str, Any]:
    s, rows = run.summary, run.rows
    accs = [float(r["accuracy"]) for r in rows if r.get("accuracy") is not None]
    ups = [float(r["bytes_up_per_client"]) for r in rows
           if r["round"] > 0 and r.get("bytes_up_per_client")]
    leakage = None if run.leakage is None else "; ".join(
        f"{r['attack']} {r['metric']}={format_cell(r.get('value'))}" for r in run.leakage)
    return {
        "run": label,
        "method": run.facts.method,
        "backbone": run.facts.backbone,
        "dataset": run.facts.dataset,
        "secure": run.facts.secure_mode,
        "status": s.get("status"),
        "rounds": max((int(r["round"]) for r in rows), default=0),
        "final_accuracy": _pick(s, "final_accuracy", accs[-1] if accs else None),
        "best_accuracy": max(accs) if accs else None,
        "bytes_up_per_client_round": _pick(s, "bytes_up_per_client_round",
                                           sum(ups) / len(ups) if ups else None),
        "epsilon": _pick(s, "epsilon", _last(rows, "epsilon")),
        "user_epsilon": _pick(s, "user_level_epsilon", _last(rows, "user_epsilon")),
        "wall_seconds": _pick(s, "wall_seconds", _last(rows, "wall_seconds")),
        "leakage": leakage,
    }


def comparison(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """One row per run, keyed by :data:`COLUMNS`' keys; None where a value is unknown."""
    return [_row(run, label) for run, label in zip(runs, run_labels(runs), strict=True)]


def format_cell(value: Any, key: str = "") -> str:
    """Human form of a comparison value: ``—`` for unknown, 4 digits for accuracies."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key.endswith("accuracy"):
        return f"{value:.4f}"
    if key.startswith("bytes"):
        return f"{value:,.0f}"
    if key == "wall_seconds":
        return f"{value:.1f}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_comparison(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``comparison.md`` (formatted) and ``comparison.csv`` (raw values, empty
    where unknown)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = [h for _, h in COLUMNS]
    md = out_dir / "comparison.md"
    md.write_text(markdown_table(header, [[format_cell(r.get(k), k) for k, _ in COLUMNS]
                                          for r in rows]), encoding="utf-8")
    path = out_dir / "comparison.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([k for k, _ in COLUMNS])
        for r in rows:
            writer.writerow(["" if r.get(k) is None else r.get(k) for k, _ in COLUMNS])
    return [md, path]


def plot_overlay(runs: Sequence[RunData], out_dir: Path) -> list[Path]:
    """Every run's central accuracy and loss (and epsilon, where any run has one) on
    shared axes, one colour per run, each budget a dashed line in its run's colour."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = run_labels(runs)
    written: list[Path] = []
    shared = [v for v in ({r.facts.backbone for r in runs}, {r.facts.dataset for r in runs})
              if len(v) == 1]
    heading = " · ".join([f"{len(runs)} runs", *(next(iter(v)) for v in shared)])
    for metric, ylabel in (("accuracy", "central accuracy (held-out)"),
                           ("loss", "central cross-entropy loss")):
        fig, ax = new_figure()
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            xs, ys = series(run.rows, metric)
            if xs:
                ax.plot(xs, ys, marker="o", color=f"C{i % 10}", label=label)
        round_axis(ax, ylabel, f"{metric}: {heading}")
        written += save_figure(fig, out_dir, metric)
    has_eps = any(series(r.rows, k)[0] for r in runs for k in ("epsilon", "user_epsilon"))
    if has_eps or any(r.facts.dp_budget or r.facts.user_budget for r in runs):
        fig, ax = new_figure()
        top = 1.0
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            colour = f"C{i % 10}"
            for key, style, level, budget in (
                    ("epsilon", "-", "sample", run.facts.dp_budget),
                    ("user_epsilon", ":", "user", run.facts.user_budget)):
                xs, ys = series(run.rows, key)
                top = max([top, *ys, *([budget] if budget is not None else [])])
                if xs:
                    ax.plot(xs, ys, marker="o", linestyle=style, color=colour,
                            label=f"{label}: {level}-level ε")
                if budget is not None:
                    ax.axhline(budget, linestyle="--", color=colour, alpha=0.7,
                               label=f"{label}: {level}-level budget {budget:g}")
        ax.set_ylim(0, top * 1.1)  # room above the highest budget line
        round_axis(ax, "epsilon", f"privacy: {heading}")
        written += save_figure(fig, out_dir, "epsilon")
    return written
