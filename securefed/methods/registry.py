"""Registry of tuning methods and the ``create_method`` factory.

Methods register themselves by name with :func:`register_method`; callers build one with
:func:`create_method`. Nothing is chosen with an ``if``/``elif`` chain on strings (see
``docs/architecture.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from securefed.exceptions import ConfigError, RegistryError
from securefed.methods.base import TuningMethod
from securefed.registry import Registry

__all__ = ["METHODS", "create_method", "method_params", "register_method"]

METHODS: Registry[type[TuningMethod]] = Registry("tuning method")

M = TypeVar("M", bound=type[TuningMethod])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator registering a frozen-dataclass :class:`TuningMethod` under ``name``.

    Raises
    ------
    RegistryError
        If ``name`` is taken, or the class is not a dataclass subclass of TuningMethod.
    """

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, TuningMethod)):
            raise RegistryError(f"{cls!r} is not a TuningMethod subclass")
        if not dataclasses.is_dataclass(cls):
            raise RegistryError(f"tuning method {name!r} must be a frozen dataclass")
        if getattr(cls, "name", None) != name:
            raise RegistryError(
                f"{cls.__name__}.name is {getattr(cls, 'name', None)!r}, not {name!r}"
            )
        METHODS.register(name, cls)
        return cls

    return decorate


def method_params(name: str) -> list[str]:
    """Names of the hyper-parameters method ``name`` accepts."""
    cls = METHODS.get(name)
    return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def create_method(name: str, **params: Any) -> TuningMethod:
    """Build the tuning method ``name`` with hyper-parameters ``params``.

    Raises
    ------
    UnknownNameError
        If no method is registered as ``name``; the message lists the registered ones.
    ConfigError
        If a parameter is unknown to that method (the message lists the valid ones) or a
        value is invalid (the message names the field and value).
    """
    cls = METHODS.get(name)
    valid = method_params(name)
    for key in params:
        if key not in valid:
            raise ConfigError(
                f"unknown parameter {key!r} for tuning method {name!r}; "
                f"valid parameters: {', '.join(valid) or '(none)'}"
            )
    return cls(**params)
