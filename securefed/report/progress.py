"""A rich progress bar over rounds, fed by the run's ``metrics.jsonl``.

The ServerApp may run in another process (Flower's simulation engine), so the bar
follows the file the ServerApp writes rather than in-process callbacks; the same code
serves the in-process grid.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from securefed.report.recorder import read_metrics

__all__ = ["round_progress"]


def _describe(row: dict) -> str:
    acc = row.get("accuracy")
    up = row.get("bytes_up_per_client")
    parts = [f"round {row['round']}"]
    if acc is not None:
        parts.append(f"acc {acc:.3f}")
    if up:
        parts.append(f"up {up / 1024:.1f} KiB/client")
    if row.get("rejected_replies"):
        parts.append(f"[red]{row['rejected_replies']} rejected[/red]")
    return " · ".join(parts)


@contextmanager
def round_progress(run_dir: Path, rounds: int, *, console: Console | None = None,
                   interval: float = 0.5) -> Iterator[None]:
    """Show a progress bar of completed rounds while the body runs."""
    console = console or Console(stderr=True)
    stop = threading.Event()
    progress = Progress(TextColumn("[bold]federated rounds"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.description}"), console=console, transient=False)
    task = progress.add_task("starting", total=rounds)

    def follow() -> None:
        while not stop.wait(interval):
            rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["round"] > 0]
            if rows:
                progress.update(task, completed=len(rows), description=_describe(rows[-1]))

    thread = threading.Thread(target=follow, daemon=True)
    with progress:
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=2)
            rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["round"] > 0]
            if rows:
                progress.update(task, completed=len(rows), description=_describe(rows[-1]))
