"""Experiment config: parsing, validation, overrides, flat run-config form."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

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
    assert cfg.train.lr == 5e-3  # "auto" for LoRA on a text encoder: the demo is unchanged
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
    assert cfg.method.params == {"r": 8, "alpha": 16}
    assert cfg.train.lr == 5e-3 and from_flat(to_flat(cfg)) == cfg
    assert not any(k.startswith("method.") and k.count(".") == 1 and k != "method.name"
                   for k in app_cfg), "method parameters must be under method.<name>."


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
        ({"train": {"lr": "fast"}}, r"lr = 'fast' has the wrong type; expected float or \"auto\""),
        ({"train": {"lr": 0}}, r"lr = 0(\.0)? is invalid"),
        ({"method": {"name": "lora", "r": 8}},
         r"\[method\] r = 8: .*move it to \[method\.lora\].*--set method\.lora\.r="),
        ({"method": {"name": "lora", "lora": {"rank": 4}}},
         r"\[method\.lora\] unknown parameter 'rank'.*valid parameters: r, alpha"),
        ({"method": {"name": "lora", "lora": {"r": 0}}}, r"\[method\.lora\].*\br\b"),
        ({"method": {"name": "lora", "prompts": {"num_tokens": 4}}},
         r"\[method\.prompts\] names no tuning method; valid methods: .*prompt.*lora"),
        ({"method": {"name": "lora", "bitfit": 3}}, r"\[method\] bitfit = 3: .*move it"),
        ({"method": {"name": "lorra"}}, r"unknown tuning method 'lorra'"),
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
    cfg = apply_overrides(ExperimentConfig(), ["method.lora.r=16", "train.lr=0.01",
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


# -- method tables -----------------------------------------------------------------------


def test_set_method_name_switches_method_on_the_quickstart() -> None:
    """Issue 11: `--set method.name=bitfit` was refused because `r` is not a bitfit key."""
    quick = load_config(ROOT / "configs" / "quickstart.toml")
    cfg = apply_overrides(quick, ["method.name=bitfit"])
    assert cfg.method.name == "bitfit"
    assert cfg.method.params == {}
    assert cfg.method.tables["lora"] == {"r": 8, "alpha": 16}  # kept, not validated
    back = apply_overrides(cfg, ["method.name=lora"])
    assert back.method.params == {"r": 8, "alpha": 16}


def test_only_the_chosen_methods_table_is_validated() -> None:
    tree = {"method": {"name": "lora", "lora": {"r": 4},
                       "prompt": {"not_a_prompt_key": 1}}}  # a registered method: kept as is
    cfg = ExperimentConfig.from_dict(tree)
    assert cfg.method.params == {"r": 4}
    assert cfg.method.tables["prompt"] == {"not_a_prompt_key": 1}
    with pytest.raises(ConfigError, match=r"\[method\.prompt\] unknown parameter "
                                          r"'not_a_prompt_key'.*num_tokens"):
        apply_overrides(cfg, ["method.name=prompt"])


def test_set_reaches_a_methods_table_and_refuses_the_old_flat_key() -> None:
    cfg = apply_overrides(ExperimentConfig(), ["method.lora.r=4", "method.prompt.num_tokens=3"])
    assert cfg.method.params == {"r": 4}
    assert cfg.method.tables["prompt"] == {"num_tokens": 3}
    assert apply_overrides(cfg, ["method.name=prompt"]).method.params == {"num_tokens": 3}
    with pytest.raises(ConfigError, match=r"move it to \[method\.lora\]"):
        apply_overrides(cfg, ["method.r=4"])
    with pytest.raises(ConfigError, match=r"table\.key=value"):
        apply_overrides(cfg, ["method..r=4"])


def test_old_layout_file_gives_the_move_it_error(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text('[method]\nname = "prompt"\nnum_tokens = 8\n')
    with pytest.raises(ConfigError, match=r"\[method\] num_tokens = 8: .*\[method\.prompt\]"):
        load_config(path)


def test_flat_form_round_trips_method_tables() -> None:
    cfg = ExperimentConfig.from_dict({"method": {
        "name": "lora", "lora": {"r": 4, "target_modules": ["query"]},
        "prompt": {"num_tokens": 3}, "bitfit": {}}})
    flat = to_flat(cfg)
    assert flat["method.lora.r"] == 4
    assert flat["method.lora.target_modules"] == ["query"]
    assert flat["method.prompt.num_tokens"] == 3
    assert "bitfit" not in cfg.method.tables  # an empty table is no table
    assert from_flat(flat) == cfg
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    written = tomllib.loads(tomli_w.dumps(cfg.to_dict()))  # as the run directory has it
    assert ExperimentConfig.from_dict(written) == cfg
    with pytest.raises(ConfigError, match=r"'table\.key'"):
        from_flat({"method": "lora"})


# -- lr = "auto" --------------------------------------------------------------------------


def test_lr_auto_resolves_per_method_and_family_and_records_its_source() -> None:
    from securefed.defaults import default_for

    text = ExperimentConfig()
    assert text.train.lr == 5e-3 == default_for("lora", "text").lr
    assert text.train.lr_source.startswith("auto: lora on text backbones (LoRA, Hu et al.")
    vision = ExperimentConfig.from_dict({"model": {"backbone": "dinov2-s"}})
    assert vision.train.lr == default_for("lora", "image").lr < text.train.lr
    assert "lora on image backbones" in vision.train.lr_source
    bitfit = ExperimentConfig.from_dict({"method": {"name": "bitfit"},
                                         "model": {"backbone": "dinov2-s"}})
    assert bitfit.train.lr == default_for("bitfit", "image").lr
    explicit = ExperimentConfig.from_dict({"train": {"lr": 0.02}})
    assert (explicit.train.lr, explicit.train.lr_source) == (0.02, "config")
    assert isinstance(ExperimentConfig.from_dict({"train": {"lr": 1}}).train.lr, float)


def test_set_backbone_picks_the_vision_default_on_the_quickstart() -> None:
    """Issue 11: dinov2-s diverged at the quickstart's lr 5e-3 (loss 2.8 -> 7.7)."""
    from securefed.defaults import default_for

    quick = load_config(ROOT / "configs" / "quickstart.toml")
    vision = apply_overrides(quick, ["model.backbone=dinov2-s"])
    assert vision.train.lr == default_for("lora", "image").lr
    assert "image" in vision.train.lr_source
    again = apply_overrides(vision, ["model.backbone=minilm-l6"])
    assert again.train.lr == quick.train.lr
    pinned = apply_overrides(quick, ["train.lr=0.01", "model.backbone=dinov2-s"])
    assert (pinned.train.lr, pinned.train.lr_source) == (0.01, "config")
    assert apply_overrides(pinned, ["train.lr=auto"]).train.lr == vision.train.lr


def test_resolved_rate_written_out_reads_back_and_edits_win(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "quickstart.toml")
    written = cfg.to_dict()
    assert written["train"]["lr"] == 5e-3 and written["train"]["lr_source"].startswith("auto")
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(written))
    assert load_config(path) == cfg
    assert apply_overrides(load_config(path),
                           ["model.backbone=dinov2-s"]).train.lr != 5e-3  # still "auto"
    written["train"]["lr"] = 0.02  # edited by hand; the stale source is not believed
    edited = ExperimentConfig.from_dict(written)
    assert (edited.train.lr, edited.train.lr_source) == (0.02, "config")


def test_every_method_has_a_default_for_every_family() -> None:
    from securefed.defaults import FAMILIES, LR_DEFAULTS
    from securefed.methods import METHODS

    for family in FAMILIES:
        for name in METHODS.names():
            assert (name, family) in LR_DEFAULTS, (name, family)
            ExperimentConfig.from_dict({"method": {"name": name}, "model": {
                "backbone": "minilm-l6" if family == "text" else "dinov2-s"}})
    assert all(entry.source for entry in LR_DEFAULTS)


def test_alias_families_agree_with_the_resolved_backbones() -> None:
    from securefed.defaults import _ALIAS_FAMILY, backbone_family
    from securefed.models import BACKBONES, resolve_backbone

    assert set(_ALIAS_FAMILY) == set(BACKBONES.names())
    for alias, family in _ALIAS_FAMILY.items():
        assert resolve_backbone(alias).modality == family == backbone_family(alias)


def test_folder_backbone_family_is_read_from_its_config(tiny_backbones) -> None:
    from securefed.defaults import backbone_family, default_for

    assert backbone_family(str(tiny_backbones["vit"])) == "image"
    assert backbone_family(str(tiny_backbones["roberta"])) == "text"
    cfg = ExperimentConfig.from_dict({"model": {"backbone": str(tiny_backbones["dinov2"])},
                                      "method": {"name": "bitfit"}})
    assert cfg.train.lr == default_for("bitfit", "image").lr


def test_unknown_backbone_with_auto_lr_is_a_clear_error() -> None:
    from securefed.exceptions import SecurefedError

    with pytest.raises(SecurefedError,
                       match=r"'not a backbone!' is neither a backbone alias \(minilm-l6"):
        ExperimentConfig.from_dict({"model": {"backbone": "not a backbone!"}})


def lr_default_rows() -> list[str]:
    from securefed.defaults import LR_DEFAULTS

    return [f"| `{d.method}` | {d.family} | {d.lr:g} | {d.source} | {d.measured or '—'} |"
            for d in LR_DEFAULTS]


def test_docs_list_every_lr_default_as_the_code_has_it() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    block = text.split("<!-- lr-defaults:start -->")[1].split("<!-- lr-defaults:end -->")[0]
    rows = [line for line in block.strip().splitlines()[2:]]
    assert rows == lr_default_rows()
