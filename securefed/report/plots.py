"""PNG plots of a run: accuracy and loss against round (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_run"]


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["round"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(rows: Sequence[dict[str, Any]], out_dir: Path, *, title: str = "") -> list[Path]:
    """Write ``accuracy.png`` and ``loss.png`` from ``metrics.jsonl`` rows.

    Central (held-out split) and federated (clients' validation splits) curves are
    drawn where present. Returns the written paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, label in (("accuracy", "accuracy"), ("loss", "cross-entropy loss")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for key, name in ((metric, "central (held-out)"),
                          (f"federated_{metric}", "federated (client val)"),
                          (f"train_{metric}", "client train")):
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_title(title or metric)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    curves = [(_series(rows, key), name) for key, name in (
        ("epsilon", "largest client epsilon (sample-level)"),
        ("user_epsilon", "user-level epsilon (server)"))]
    if any(xs for (xs, _), _ in curves):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for (xs, ys), name in curves:
            if xs:
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xlabel("round")
        ax.set_ylabel("epsilon")
        ax.grid(alpha=0.3)
        ax.set_title(title or "privacy")
        ax.legend()
        fig.tight_layout()
        path = out_dir / "epsilon.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
