"""Experiment config: parsing, validation, overrides, flat run-config form."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from securefed.config import (
    ExperimentConfig,
    apply_overrides,
    from_flat,
    load_config,
    to_flat,
)
from securefed.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_is_valid_and_round_trips() -> None:
    cfg = load_config(ROOT / "configs" / "quickstart.toml")
    assert cfg.method.name == "lora"
    assert cfg.method.params["r"] == 8
    assert cfg.data.num_clients == 10
    assert cfg.federation.clients_per_round == 5
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert from_flat(to_flat(cfg)) == cfg


def test_every_config_in_configs_folder_is_valid() -> None:
    files = sorted((ROOT / "configs").glob("*.toml"))
    assert files
    for path in files:
        load_config(path)


def test_pyproject_flower_defaults_parse() -> None:
    from securefed.app.settings import config_from_run_config

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    app_cfg = doc["tool"]["flwr"]["app"]["config"]

    def flatten(d, prefix=""):
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(flatten(v, key + "."))
            else:
                out[key] = v
        return out

    cfg = config_from_run_config(flatten(app_cfg))
    assert cfg.model.backbone == "minilm-l6"


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        ({"model": {"backbon": "x"}}, r"unknown key \[model\] 'backbon'; valid keys: .*backbone"),
        ({"modle": {}}, r"unknown table \[modle\]"),
        ({"data": {"alpha": 0}}, r"alpha = 0(\.0)? is invalid"),
        ({"data": {"alpha": -1.0}}, r"alpha"),
        ({"data": {"num_clients": 3}, "federation": {"clients_per_round": 5}},
         r"clients_per_round = 5 exceeds \[data\] num_clients = 3"),
        ({"federation": {"rounds": 0}}, r"rounds"),
        ({"federation": {"clients_per_round": 2, "min_replies": 3}}, r"min_replies"),
        ({"train": {"lr": "fast"}}, r"lr = 'fast' has the wrong type"),
        ({"train": {"batch_size": 1.5}}, r"batch_size"),
        ({"federation": {"central_eval": 1}}, r"central_eval"),
        ({"capture": {"round": 11}}, r"\[capture\] round = 11 exceeds"),
        ({"capture": {"round": 1, "client_index": 5}}, r"client_index = 5 must be < "),
    ],
)
def test_bad_configs_fail_with_a_message_naming_the_problem(tree, match) -> None:
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig.from_dict(tree)


def test_overrides() -> None:
    cfg = apply_overrides(ExperimentConfig(), ["method.r=16", "train.lr=0.01",
                                               "model.backbone=dinov2-s",
                                               "federation.central_eval=false"])
    assert cfg.method.params["r"] == 16
    assert cfg.train.lr == 0.01
    assert cfg.model.backbone == "dinov2-s"
    assert cfg.federation.central_eval is False
    with pytest.raises(ConfigError, match=r"table\.key=value"):
        apply_overrides(cfg, ["lr=1"])
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(cfg, ["train.learning_rate=1"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nbackbone=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
