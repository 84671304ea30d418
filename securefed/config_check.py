"""One check shared by every config table: a failed condition names the table, the key,
the value and what would be valid."""

from __future__ import annotations

from securefed.exceptions import ConfigError

__all__ = ["require"]


def require(cond: bool, table: str, key: str, value: object, need: str) -> None:
    """Raise ``ConfigError("[table] key = value is invalid: need")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"[{table}] {key} = {value!r} is invalid: {need}")
