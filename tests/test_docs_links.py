"""Users have only the repository: every document the code or docs cite must be in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("securefed", "strategies", "attacks", "bench", "docs", "configs")
           for p in sorted((ROOT / d).rglob("*")) if p.suffix in {".py", ".md", ".toml"}]
SOURCES.append(ROOT / "README.md")
CITED = re.compile(r"docs/[A-Za-z0-9_.-]+\.md")
OUTSIDE = re.compile(r"DESIGN\.md|STACK\.md|ASSETS\.md|ATTACKS\.md|\.\./shared")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_documents_exist_in_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    outside = sorted(set(OUTSIDE.findall(text)))
    assert not outside, f"{path.name} cites documents users do not have: {outside}"
    missing = sorted({c for c in CITED.findall(text) if not (ROOT / c).is_file()})
    assert not missing, f"{path.name} cites missing documents: {missing}"


def test_every_test_the_threat_model_names_exists() -> None:
    """docs/threat-model.md names the tests behind each claim: they must all be real."""
    text = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
    current = None
    missing = []
    for ref in re.findall(r"`(tests/[\w/]+\.py)?((?:::)?\w+)?`", text):
        path, name = ref
        if path:
            current = ROOT / path
            if not current.is_file():
                missing.append(path)
                continue
        if name.startswith("::") or (not path and name.startswith("test_")):
            func = name.lstrip(":").rstrip("*")
            if current is None or f"def {func}" not in current.read_text(encoding="utf-8"):
                missing.append(f"{current}::{func}")
    assert not missing, f"docs/threat-model.md names missing tests: {missing}"
