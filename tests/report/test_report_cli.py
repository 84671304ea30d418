"""``securefed report``: regenerate one run, compare several, refuse what is not a run."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from securefed.cli import app
from securefed.report.compare import COLUMNS, comparison, load_run, run_labels
from securefed.report.recorder import read_metrics
from tests.report.conftest import fabricate_run
from tests.report.test_metrics_csv import assert_csv_matches
from tests.report.test_plots import svg_text

runner = CliRunner()
LEAKAGE = {"results": [{"attack": "dlg", "metric": "psnr_db", "value": 18.25},
                       {"attack": "ig", "metric": "ssim", "value": None}]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    return {
        "plain": fabricate_run(root / "plain", rounds=3, accuracies=[0.2, 0.5, 0.8, 0.7]),
        "dp": fabricate_run(root / "dp", epsilons=[2.0, 2.8],
                            dp={"mode": "sample", "target_epsilon": 3.0}),
        "user": fabricate_run(root / "user", user_epsilons=[0.5, 0.9], leakage=LEAKAGE,
                              user_dp={"clipping": "server-fixed", "target_epsilon": 1.0},
                              method={"name": "bitfit"}),
    }


def invoke(*args: str):
    return runner.invoke(app, ["report", *map(str, args)])


def test_one_run_regenerates_its_plots_and_csv_from_files(runs, tmp_path) -> None:
    res = invoke(runs["dp"], "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    for name in ("accuracy", "loss", "epsilon"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.svg").is_file()
    assert "sample-level budget ε = 3" in svg_text(out / "epsilon.svg")
    assert "sample-level DP ε target 3" in svg_text(out / "accuracy.svg")
    assert_csv_matches(out / "metrics.csv", read_metrics(runs["dp"] / "metrics.jsonl"))
    assert not (out / "comparison.md").exists()
    assert "dp (lora, plain, sample ε≤3)" in res.output  # the one-row table, uncut


def test_several_runs_are_overlaid_and_compared(runs, tmp_path) -> None:
    paths = [runs["plain"], runs["dp"], runs["user"]]
    res = invoke(*paths, "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    out = tmp_path / "cmp"
    labels = run_labels([load_run(p) for p in paths])
    assert labels == ["plain (lora, plain)", "dp (lora, plain, sample ε≤3)",
                      "user (bitfit, plain, user ε≤1)"]
    acc = svg_text(out / "accuracy.svg")
    assert all(label in acc for label in labels)
    assert "accuracy: 3 runs · minilm-l6 · bbc-news" in acc  # what the runs share
    eps = svg_text(out / "epsilon.svg")
    assert "dp (lora, plain, sample ε≤3): sample-level budget 3" in eps
    assert "user (bitfit, plain, user ε≤1): user-level ε" in eps
    with (out / "comparison.csv").open(newline="") as fh:
        table = {r["run"]: r for r in csv.DictReader(fh)}
    plain, dp, user = (table[label] for label in labels)
    assert float(plain["final_accuracy"]) == 0.7 and float(plain["best_accuracy"]) == 0.8
    assert plain["rounds"] == "3" and plain["epsilon"] == "" and plain["leakage"] == ""
    assert float(dp["epsilon"]) == 2.8 and dp["user_epsilon"] == ""
    assert float(user["user_epsilon"]) == 0.9
    assert float(dp["bytes_up_per_client_round"]) == 1500.0  # mean of 1000, 2000
    assert float(dp["wall_seconds"]) > 0 and dp["status"] == "completed"
    assert user["leakage"] == "dlg psnr_db=18.2; ig ssim=—"
    md = (out / "comparison.md").read_text().splitlines()
    assert md[0] == "| " + " | ".join(h for _, h in COLUMNS) + " |" and len(md) == 5
    assert "| plain (lora, plain) | lora | minilm-l6 | bbc-news | none | completed | 3 | " \
           "0.7000 | 0.8000 |" in md[2]
    for header in (h for _, h in COLUMNS):  # printed table: every column, every run, uncut
        assert header in res.output
    for label in labels:
        assert label in res.output
    assert "…" not in res.output


def test_runs_with_the_same_name_get_distinct_labels(runs, tmp_path) -> None:
    copy = tmp_path / "again" / "plain"
    shutil.copytree(runs["plain"], copy)
    labels = run_labels([load_run(runs["plain"]), load_run(copy)])
    assert len(set(labels)) == 2 and labels[1].startswith("again/plain")


def test_a_run_without_summary_or_config_still_compares(runs, tmp_path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs["plain"] / "metrics.jsonl", bare)
    (row,) = comparison([load_run(bare)])
    assert row["final_accuracy"] == 0.7 and row["status"] is None and row["method"] == "?"
    res = invoke(bare, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output


def not_a_run(root, kind: str):
    """A path that is not a run directory: missing, a file, empty, or with a bad line."""
    path = root / kind
    if kind == "file":
        path.write_text("x")
    elif kind in ("empty", "bad"):
        path.mkdir()
        if kind == "bad":
            (path / "metrics.jsonl").write_text('{"round": 0}\n{oops\n')
    return path


@pytest.mark.parametrize(("kind", "needle"), [
    ("missing", "does not exist"),
    ("file", "is not a directory"),
    ("empty", "not a securefed run directory: it has no metrics.jsonl"),
    ("bad", "line 2 is not JSON"),
])
def test_what_is_not_a_run_is_refused_in_one_line(tmp_path, kind, needle) -> None:
    res = invoke(not_a_run(tmp_path, kind), "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert needle in line, res.output
    assert not (tmp_path / "o").exists()


def test_out_may_not_be_the_run_itself(runs) -> None:
    res = invoke(runs["plain"], "--out", runs["plain"])
    assert res.exit_code == 2 and "run directory itself" in res.output


def test_a_malformed_leakage_file_is_named(runs, tmp_path) -> None:
    run = shutil.copytree(runs["plain"], tmp_path / "leaky")
    (run / "leakage.json").write_text(json.dumps({"results": [{"attack": "dlg"}]}))
    res = invoke(run, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "leakage.json" in res.output and "results[0]" in res.output
