"""Shared fixtures: one tiny random folder per supported model type."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from securefed.models import TINY_WRITERS, write_tiny_backbone

TINY_TYPES = TINY_WRITERS.names()


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``model_type`` → a tiny folder written once per session (treat as read-only)."""
    root = tmp_path_factory.mktemp("tiny")
    return {mt: write_tiny_backbone(mt, root / mt) for mt in TINY_TYPES}


@pytest.fixture
def fresh_tiny(tmp_path: Path) -> Callable[[str], Path]:
    """Write a tiny folder that the test may modify."""

    def make(model_type: str) -> Path:
        return write_tiny_backbone(model_type, tmp_path / model_type)

    return make
