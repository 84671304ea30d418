"""Exported adapters: named base, no local path, evaluate and predict (library and CLI)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from securefed.adapters import evaluate_adapter, export_run_adapter, load_adapter, predict
from securefed.app.launcher import run_inprocess
from securefed.app.runtime import dataset_for, heldout_split, tuned_model
from securefed.cli import app
from securefed.exceptions import ConfigError
from securefed.methods.export import METADATA_FILE
from securefed.training import evaluate
from tests.app.conftest import tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def text_run(tiny_backbones, tmp_path_factory) -> tuple[Path, dict]:
    """One tiny LoRA run (tiny BERT, bbc-news) through the real apps, in process."""
    run_dir = tmp_path_factory.mktemp("text-run")
    cfg = tiny_config(tiny_backbones["bert"], run_dir, rounds=1)
    return run_dir, run_inprocess(cfg, run_dir)


def local_paths(*extra: Path) -> list[str]:
    """Absolute locations an export must not mention: the virtualenv, home, temp dirs."""
    return [sys.prefix, str(Path.home()), "/tmp/", *(str(p) for p in extra)]


def assert_no_local_path(folder: Path, *extra: Path) -> None:
    for path in folder.rglob("*"):
        data = path.read_bytes()
        for needle in local_paths(*extra):
            assert needle.encode() not in data, (path.name, needle)


def test_a_runs_adapter_names_its_base_and_task_never_a_path(text_run, tiny_backbones) -> None:
    run_dir, _ = text_run
    adapter = run_dir / "adapter"
    assert_no_local_path(adapter, tiny_backbones["bert"], run_dir)
    meta = json.loads((adapter / METADATA_FILE).read_text())
    assert meta["base_model"] == {"name": "bert", "source": "local", "model_type": "bert",
                                  "modality": "text"}
    assert meta["task"]["label_names"] == ["business", "entertainment", "politics", "sports",
                                           "tech"]
    assert json.loads((adapter / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == "bert"
    assert "base_model: bert\n" in (adapter / "README.md").read_text()


def test_an_alias_base_is_recorded_as_the_alias_and_resolved_back(tmp_path) -> None:
    cfg = tiny_config("minilm-l6", tmp_path, method_name="lora")
    tm = tuned_model(cfg)
    export_run_adapter(cfg, tm, tmp_path / "adapter")
    assert_no_local_path(tmp_path / "adapter", tmp_path)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "minilm-l6"
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "base_model: minilm-l6\n" in card and "base_model:adapter:minilm-l6" in card
    loaded = load_adapter(tmp_path / "adapter")  # no run directory, no --backbone
    assert loaded.backbone.name == "minilm-l6"
    batch = next(iter(heldout_split(cfg).batches(4)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**inputs).logits, tm.model.eval()(**inputs).logits)


def test_evaluate_reproduces_the_runs_final_central_evaluation(text_run) -> None:
    run_dir, summary = text_run
    res = runner.invoke(app, ["evaluate", str(run_dir / "adapter"), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    last = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert result["dataset"] == "bbc-news" and result["examples"] == 30
    assert result["accuracy"] == summary["final_accuracy"] == last["accuracy"]
    assert result["loss"] == pytest.approx(last["loss"], rel=1e-6)


def test_a_moved_adapter_with_a_local_base_needs_backbone(text_run, tiny_backbones,
                                                          tmp_path) -> None:
    moved = shutil.copytree(text_run[0] / "adapter", tmp_path / "adapter")
    res = runner.invoke(app, ["evaluate", str(moved)])
    assert res.exit_code == 2 and "local backbone folder named 'bert'" in res.output
    assert "--backbone" in res.output
    res = runner.invoke(app, ["evaluate", str(moved), "--backbone",
                              str(tiny_backbones["bert"]), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["accuracy"] == text_run[1]["final_accuracy"]


def test_an_export_without_base_or_task_is_read_from_its_run_directory(text_run,
                                                                       tmp_path) -> None:
    old = shutil.copytree(text_run[0], tmp_path / "old-run")
    meta_path = old / "adapter" / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    del meta["base_model"], meta["task"]
    meta_path.write_text(json.dumps(meta))
    result = evaluate_adapter(load_adapter(old / "adapter"))
    assert result["accuracy"] == text_run[1]["final_accuracy"]


def test_predict_prints_a_label_and_probability_per_text(text_run) -> None:
    texts = ["Shares fell sharply on the stock market", "The striker scored twice"]
    res = runner.invoke(app, ["predict", str(text_run[0] / "adapter"), *texts, "--json"])
    assert res.exit_code == 0, res.output
    preds = json.loads(res.output)
    names = ["business", "entertainment", "politics", "sports", "tech"]
    assert [p["input"] for p in preds] == texts
    for p in preds:
        assert p["label"] == names[p["index"]] and 1 / 5 <= p["probability"] <= 1
    table = runner.invoke(app, ["predict", str(text_run[0] / "adapter"), *texts])
    assert table.exit_code == 0 and all(t in table.output for t in texts)  # uncut


@pytest.mark.parametrize(("args", "needle"), [
    (["--data", "tweet-sentiment"], "has 3 classes, but the adapter was trained for 5"),
    (["--data", "digits"], "dataset 'digits' is image"),
    (["--split", "val"], "unknown split 'val'"),
])
def test_evaluate_refuses_a_dataset_that_does_not_fit(text_run, args, needle) -> None:
    res = runner.invoke(app, ["evaluate", str(text_run[0] / "adapter"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_missing_adapter_and_non_adapter_are_refused(tmp_path) -> None:
    res = runner.invoke(app, ["predict", str(tmp_path / "nope"), "hello"])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert res.exit_code == 2 and f"no {METADATA_FILE}" in res.output


def test_safetensors_export_evaluates_like_the_model_it_came_from(tiny_backbones,
                                                                  tmp_path) -> None:
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, method_name="bitfit")
    tm = tuned_model(cfg)
    export_run_adapter(cfg, tm, tmp_path / "adapter")
    assert_no_local_path(tmp_path / "adapter", tiny_backbones["bert"], tmp_path)
    expected = evaluate(tm.model, heldout_split(cfg).batches(64))
    loaded = load_adapter(tmp_path / "adapter", backbone=str(tiny_backbones["bert"]))
    got = evaluate_adapter(loaded)
    assert got["accuracy"] == expected.accuracy
    assert got["loss"] == pytest.approx(expected.loss, rel=1e-6)


def test_predict_on_image_files(tiny_backbones, tmp_path) -> None:
    from PIL import Image

    cfg = tiny_config(tiny_backbones["vit"], tmp_path, dataset="digits", method_name="head")
    tm = tuned_model(cfg)
    export_run_adapter(cfg, tm, tmp_path / "adapter")
    data = dataset_for(cfg.data, cfg.experiment.seed)
    image = np.asarray(data.test[0]["image"], dtype=np.uint8)
    path = tmp_path / "digit.png"
    Image.fromarray(image.squeeze()).save(path)
    loaded = load_adapter(tmp_path / "adapter", backbone=str(tiny_backbones["vit"]))
    (pred,) = predict(loaded, [str(path)])
    assert pred.label in data.label_names and 0 < pred.probability <= 1
    with pytest.raises(ConfigError, match="no such image file: a cat"):
        predict(loaded, ["a cat"])
    res = runner.invoke(app, ["predict", str(tmp_path / "adapter"), str(path), "--backbone",
                              str(tiny_backbones["bert"])])
    assert res.exit_code == 2 and "image backbone" in res.output  # wrong --backbone


def test_a_text_adapter_refuses_an_image_file(text_run, tmp_path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    res = runner.invoke(app, ["predict", str(text_run[0] / "adapter"), str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "is an image file" in res.output


@pytest.mark.parametrize("method", ["lora", "federa", "prompt"])
def test_a_bare_method_export_never_writes_the_local_base_path(tiny_backbones, tmp_path,
                                                               method) -> None:
    """Library use (``method.export`` without a run): the folder's name, not its path."""
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, method_name=method)
    tm = tuned_model(cfg)
    tm.method.export(tm.model, tmp_path / "adapter")
    assert_no_local_path(tmp_path / "adapter", tiny_backbones["bert"], tmp_path)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "bert"
