"""The ``securefed`` command: JSON output and error exits."""

from __future__ import annotations

import json
from pathlib import Path

import tomli_w
from typer.testing import CliRunner

from securefed.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_methods_json_lists_every_method_with_sizes(tiny_backbones) -> None:
    from securefed.methods import METHODS

    res = runner.invoke(app, ["methods", "--backbone", str(tiny_backbones["bert"]), "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads(res.output)}
    assert set(rows) == set(METHODS.names())
    assert rows["full"]["percent_of_full"] == 100.0
    for name, row in rows.items():
        assert 0 < row["trainable_params"] <= rows["full"]["trainable_params"], name
        assert row["payload_bytes"] == 4 * row["trainable_params"], name
    assert rows["ffa-lora"]["trainable_params"] < rows["lora"]["trainable_params"]
    assert rows["lora"]["exact_under_sum"] is False and rows["ffa-lora"]["exact_under_sum"]
    assert rows["lora"]["export_format"] == "peft"


def test_methods_table(tiny_backbones) -> None:
    res = runner.invoke(app, ["methods", "--backbone", str(tiny_backbones["vit"])])
    assert res.exit_code == 0 and "ffa-lora" in res.output


def _cfg(tmp_path: Path, **tables) -> Path:
    tree = {"method": {"name": "lora"}, "data": {"num_clients": 2},
            "federation": {"clients_per_round": 2}}
    for k, v in tables.items():
        tree.setdefault(k, {}).update(v)
    path = tmp_path / f"c{len(list(tmp_path.glob('c*.toml')))}.toml"  # one file per case
    path.write_text(tomli_w.dumps(tree))
    return path


def test_run_rejects_bad_input_with_exit_2_and_a_clear_message(tmp_path) -> None:
    cases = [
        (_cfg(tmp_path, method={"name": "loraa"}), [], "unknown tuning method 'loraa'"),
        (_cfg(tmp_path), ["--set", "model.backbone=acme/bert-xxl"], "offline aliases"),
        (_cfg(tmp_path), ["--set", "data.dataset=imagenet-22k"], "unknown dataset"),
        (_cfg(tmp_path), ["--set", "train.lrate=1"], "unknown key [train] 'lrate'"),
        (_cfg(tmp_path), ["--set", "federation.clients_per_round=3"], "exceeds"),
        (_cfg(tmp_path), ["--engine", "warp"], "unknown engine"),
        (_cfg(tmp_path), ["--set", "data.alpha=0"], "alpha"),
        (tmp_path / "missing.toml", [], "not found"),
    ]
    for path, extra, needle in cases:
        res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o"), *extra])
        assert res.exit_code == 2, (needle, res.output)
        assert needle in " ".join(res.output.split()).lower(), (needle, res.output)
        assert not (tmp_path / "o" / "superlink.pid").exists()  # failed before any process


def test_backbones_and_datasets_list_offline_names() -> None:
    assert "minilm-l6" in runner.invoke(app, ["backbones"]).output
    assert "bbc-news" in runner.invoke(app, ["datasets"]).output
