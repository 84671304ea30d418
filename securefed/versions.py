"""Installed versions of securefed and the libraries whose behaviour it depends on."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__all__ = ["DEPENDENCIES", "version_line", "versions"]

#: Distributions reported beside securefed's own version.
DEPENDENCIES = ("flwr", "torch", "peft", "transformers", "opacus")


def _version_of(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """``{"securefed": ..., "flwr": ..., ..., "python": ...}`` from the installed metadata."""
    return {"securefed": _version_of("securefed"),
            **{dist: _version_of(dist) for dist in DEPENDENCIES},
            "python": platform.python_version()}


def version_line() -> str:
    """``securefed X (flwr Y, torch Z, ..., python P)``."""
    v = versions()
    rest = ", ".join(f"{k} {val}" for k, val in v.items() if k != "securefed")
    return f"securefed {v['securefed']} ({rest})"
