"""``securefed report RUN [RUN ...] --out DIR``: plots and tables from run directories.

One run: its plots (``accuracy``, ``loss``, ``epsilon`` with DP; PNG and SVG) and
``metrics.csv`` are regenerated into ``DIR`` from ``metrics.jsonl``, ``summary.json`` and
``config.toml`` alone. Several runs: their curves are overlaid (one colour per run,
labelled by directory name, method, secure mode and ε budget) and the comparison table
is written as ``comparison.md`` and ``comparison.csv``. The table is printed either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from securefed.exceptions import ConfigError, SecurefedError
from securefed.report.console import err, fail

__all__ = ["report"]


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (one or more).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the plots and tables.")],
) -> None:
    """Regenerate a run's plots and metrics.csv, or compare several runs."""
    from securefed.report.compare import (
        COLUMNS,
        comparison,
        format_cell,
        load_run,
        plot_overlay,
        write_comparison,
    )
    from securefed.report.metrics_csv import write_metrics_csv
    from securefed.report.plots import plot_run
    from securefed.report.tables import print_table

    try:
        loaded = [load_run(path) for path in runs]
        target = out.resolve()
        for run in loaded:
            if run.path.resolve() == target:
                raise ConfigError(f"--out {out} is the run directory itself; choose another "
                                  "folder (a run directory keeps only what its run wrote)")
        if len(loaded) == 1:
            run = loaded[0]
            written = plot_run(run.rows, target, run.facts)
            written.append(write_metrics_csv(run.rows, target / "metrics.csv"))
        else:
            written = plot_overlay(loaded, target)
        rows = comparison(loaded)
        if len(loaded) > 1:
            written += write_comparison(rows, target)
    except SecurefedError as exc:
        fail(exc)
    except OSError as exc:
        fail(ConfigError(f"cannot write into {out}: {exc}"))
    table = Table(title=f"{len(loaded)} run{'s' if len(loaded) > 1 else ''}")
    for key, header in COLUMNS:
        table.add_column(header, justify="right" if key not in (
            "run", "method", "backbone", "dataset", "secure", "status", "leakage") else "left")
    for row in rows:
        table.add_row(*(format_cell(row.get(key), key) for key, _ in COLUMNS))
    print_table(table)
    for path in written:
        err.print(f"wrote {path}")
