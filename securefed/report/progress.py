"""A rich progress bar over rounds, fed by the run's ``metrics.jsonl`` and ``progress.json``.

The ServerApp may run in another process (Flower's simulation engine), so the bar
follows the files the ServerApp writes rather than in-process callbacks; the same code
serves the in-process grid:

* ``metrics.jsonl`` gives the completed rounds, the last accuracy and the bytes;
* ``progress.json`` (:mod:`securefed.app.progress_grid`) gives the round in progress:
  its protocol stage (``train``, ``secagg+ share-keys``, ``ckks decrypt``, ...) and how
  many of the clients sent that stage have replied.

The line reads, e.g.::

    federated rounds ━━━━━━━━━━━━━━━━━ 2/5 0:01:12 round 3 · secagg+ masked-input 2/4 clients
    · last acc 0.912 · ETA 1:48

and, once the rounds are over, the last accuracy and the upload per client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from securefed.files import read_json_object
from securefed.report.recorder import read_metrics
from securefed.rundir import PROGRESS

__all__ = ["describe", "eta_seconds", "round_progress"]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        return read_metrics(path)
    except ValueError:  # a line being written right now
        return []


def _clock(seconds: float) -> str:
    hours, rest = divmod(max(0, round(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eta_seconds(rows: list[dict[str, Any]], rounds: int, progress: dict[str, Any] | None,
                now: float) -> float | None:
    """Seconds until the last round ends, from the mean duration of the rounds so far
    (``wall_seconds`` between rows) less the time the current round has run; None
    before a round has completed."""
    done = [r for r in rows if r.get("round", 0) > 0 and r.get("wall_seconds") is not None]
    if not done:
        return None
    start = next((r.get("wall_seconds") for r in rows if r.get("round") == 0), None) or 0.0
    per_round = (float(done[-1]["wall_seconds"]) - float(start)) / len(done)
    remaining = max(rounds - len(done), 0) * per_round
    in_round = None
    if progress and progress.get("round") == len(done) + 1 and progress.get("round_started"):
        in_round = now - float(progress["round_started"])
    return max(remaining - (in_round or 0.0), 0.0)


def describe(rows: list[dict[str, Any]], rounds: int, progress: dict[str, Any] | None,
             now: float | None = None) -> str:
    """The text after the bar: the round in progress, its stage and replies, the last
    completed round's accuracy, upload and rejections, and the ETA."""
    now = time.time() if now is None else now
    completed = [r for r in rows if r.get("round", 0) > 0]
    current = len(completed) + 1
    parts: list[str] = []
    running = bool(progress and progress.get("round") == current and current <= rounds)
    if progress and running:
        parts.append(f"round {current}")
        parts.append(f"{progress.get('stage', '?')} {progress.get('replies', 0)}/"
                     f"{progress.get('sent', 0)} clients")
    elif not completed:
        parts.append("evaluating the initial adapter" if rows else "starting")
    if completed:
        last = completed[-1]
        if last.get("accuracy") is not None:
            parts.append(f"last acc {last['accuracy']:.3f}")
        if last.get("bytes_up_per_client") and not running:  # kept short while running
            parts.append(f"up {last['bytes_up_per_client'] / 1024:.1f} KiB/client")
        if last.get("rejected_replies"):
            parts.append(f"[red]{last['rejected_replies']} rejected[/red]")
    eta = eta_seconds(rows, rounds, progress, now) if len(completed) < rounds else None
    if eta is not None:
        parts.append(f"ETA {_clock(eta)}")
    return " · ".join(parts)


@contextmanager
def round_progress(run_dir: Path, rounds: int, *, console: Console | None = None,
                   interval: float = 0.5) -> Iterator[None]:
    """Show a progress bar of completed rounds, and of the round in progress, while
    the body runs."""
    console = console or Console(stderr=True)
    stop = threading.Event()
    progress = Progress(TextColumn("[bold]federated rounds"), BarColumn(bar_width=24),
                        MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.description}"), console=console, transient=False)
    task = progress.add_task("starting", total=rounds)

    def refresh() -> None:
        rows = _read_rows(run_dir / "metrics.jsonl")
        done = len([r for r in rows if r.get("round", 0) > 0])
        progress.update(task, completed=min(done, rounds),
                        description=describe(rows, rounds, read_json_object(
                            run_dir / PROGRESS)))

    def follow() -> None:
        while not stop.wait(interval):
            refresh()

    thread = threading.Thread(target=follow, daemon=True)
    with progress:
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=2)
            refresh()
