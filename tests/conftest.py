"""Shared fixtures: offline environment and tiny backbones written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Hugging Face folders for every supported model type."""
    from securefed.models import write_tiny_backbone

    root = tmp_path_factory.mktemp("tiny-backbones")
    return {t: write_tiny_backbone(t, root / t)
            for t in ("bert", "roberta", "vit", "dinov2", "clip")}
