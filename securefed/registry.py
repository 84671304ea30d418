"""A small name → object registry shared by every plug-in kind.

Plug-ins (tuning methods, backbones, datasets, partitioners, aggregators, attacks,
accountants) are registered by name and looked up by name; nothing is chosen with an
``if``/``elif`` chain on strings. Modelled on Opacus ``accountants/registry.py`` and
PEFT's ``register_peft_method``: duplicates are rejected, and an unknown name raises
:class:`~securefed.exceptions.UnknownNameError` listing the valid choices.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from securefed.exceptions import RegistryError, UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names mapped to plug-in objects of one kind.

    Parameters
    ----------
    kind : str
        Human-readable kind used in error messages, e.g. ``"dataset"``.

    Examples
    --------
    >>> reg: Registry[int] = Registry("number")
    >>> reg.register("one", 1)
    >>> reg.get("one")
    1
    """

    def __init__(self, kind: str) -> None:
        if not kind:
            raise ValueError("kind must be a non-empty string")
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; a duplicate name is a :class:`RegistryError`."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises
        ------
        UnknownNameError
            If no object has that name; the message lists the valid names.
        """
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, str(name), self._items) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()!r})"
