"""metrics.csv: one row per round, the same values as metrics.jsonl."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from securefed.report.metrics_csv import LEADING_COLUMNS, write_metrics_csv
from securefed.report.recorder import read_metrics
from tests.report.conftest import fabricate_run


def assert_csv_matches(csv_path: Path, rows: list[dict[str, Any]]) -> None:
    """Every key of every row is a column; every cell gives back the row's value."""
    with csv_path.open(newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows)
    columns = set().union(*rows)
    assert set(table[0]) == columns
    for row, line in zip(rows, table, strict=True):
        for key in columns:
            value, cell = row.get(key), line[key]
            if value is None:
                assert cell == "", key
            elif isinstance(value, dict | list | bool):
                assert json.loads(cell) == value, key
            elif isinstance(value, int | float):
                assert float(cell) == value, key  # exact: shortest round-trip form
            else:
                assert cell == value, key


def test_csv_round_trips_scalars_and_nested_fields(tmp_path) -> None:
    rows = [{"round": 0, "accuracy": 0.1 + 0.2, "loss": None},
            {"round": 1, "accuracy": 1 / 3, "clients": [3, 1], "rejected": {"9": "a, \"b\""},
             "secure": {"survivors": {"x": 2}}, "flag": True, "new_metric": 5}]
    path = write_metrics_csv(rows, tmp_path / "metrics.csv")
    assert_csv_matches(path, rows)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["round", "accuracy", "loss"]  # leading columns first, in order
    assert header[3:] == sorted(set(header) - set(LEADING_COLUMNS))


def test_a_run_writes_metrics_csv_beside_metrics_jsonl(tmp_path) -> None:
    run = fabricate_run(tmp_path / "run", epsilons=[1.0, 2.0], dp={"mode": "sample"})
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[1]["rejected"]
    assert_csv_matches(run / "metrics.csv", rows)
