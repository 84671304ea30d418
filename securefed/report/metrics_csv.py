"""``metrics.csv``: the rows of ``metrics.jsonl`` as a flat table, one row per round.

Columns: :data:`LEADING_COLUMNS` first (those present in some row), then every other
key any row has, in sorted order. A cell is

* empty where the round has no such key or its value is ``null``;
* the number as Python prints it (shortest round-trip form, so ``float(cell)`` gives
  back the exact value), ``true`` / ``false`` for booleans, a string as is;
* compact JSON (sorted keys) for a nested value: ``clients`` (a list), ``rejected``
  and ``evaluate_rejected`` (lists of ``{partition_id, node_id, reason}``), ``secure``
  (survivors per stage, ...).
  Their counts are columns of their own already (``rejected_replies``).

The file is written at the end of every run (beside ``metrics.jsonl``) and by
``securefed report``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LEADING_COLUMNS", "csv_cell", "metrics_columns", "write_metrics_csv"]

#: Columns that come first, in this order, when some row has them.
LEADING_COLUMNS = (
    "round", "accuracy", "loss", "federated_accuracy", "federated_loss", "train_loss",
    "train_accuracy", "epsilon", "user_epsilon", "bytes_up_per_client",
    "bytes_down_per_client", "rejected_replies", "round_seconds", "wall_seconds",
)


def csv_cell(value: Any) -> str:
    """One cell: empty for None, JSON for nested values and booleans, else ``str``."""
    if value is None:
        return ""
    if isinstance(value, bool | Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def metrics_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The leading columns any row has, then the other keys, sorted."""
    keys: set[str] = set()
    for row in rows:
        keys.update(row)
    return [c for c in LEADING_COLUMNS if c in keys] + sorted(keys - set(LEADING_COLUMNS))


def write_metrics_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write ``rows`` (``metrics.jsonl`` rows) to ``path`` as CSV; return ``path``."""
    columns = metrics_columns(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_cell(row.get(c)) for c in columns])
    return path
