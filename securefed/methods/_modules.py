"""Module-tree helpers shared by the tuning methods (private).

Everything here works from an :class:`~securefed.models.architecture.Architecture`, so no
method hard-codes a module name. Module paths are resolved against the layer template
(``"bert.encoder.layer.{i}"``) rather than matched as bare suffixes, because bare suffixes
are ambiguous: BERT's feed-forward ``output.dense`` is also a suffix of the attention
output ``attention.output.dense``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from securefed.exceptions import MethodError
from securefed.models.architecture import Architecture

__all__ = [
    "freeze_all",
    "layer_module_names",
    "layer_prefixes",
    "layer_regex",
    "set_trainable",
    "unwrap",
]


def unwrap(model: nn.Module) -> nn.Module:
    """Strip privacy-engine wrappers (Opacus ``GradSampleModule`` keeps the model as ``_module``).

    Payload keys are taken from the unwrapped model so that they do not change when a client
    switches DP-SGD on (Opacus would otherwise prefix every name with ``_module.``).
    """
    inner = getattr(model, "_module", None)
    while isinstance(inner, nn.Module):
        model = inner
        inner = getattr(model, "_module", None)
    return model


def layer_prefixes(model: nn.Module, arch: Architecture) -> list[str]:
    """Names of the Transformer blocks of ``model``, in order (``bert.encoder.layer.0``, ...).

    Raises
    ------
    MethodError
        If ``model`` has no block at ``arch.layer.format(i=0)``.
    """
    names = {name for name, _ in model.named_modules()}
    prefixes: list[str] = []
    while (prefix := arch.layer.format(i=len(prefixes))) in names:
        prefixes.append(prefix)
    if not prefixes:
        raise MethodError(
            f"no Transformer block {arch.layer.format(i=0)!r} in this {type(model).__name__}; "
            f"is it a {arch.model_type!r} model?"
        )
    return prefixes


def layer_module_names(model: nn.Module, arch: Architecture, suffix: str) -> list[str]:
    """Full names of the module ``suffix`` inside every block (one per layer)."""
    names = [f"{prefix}.{suffix}" for prefix in layer_prefixes(model, arch)]
    for name in names:
        _get(model, name)
    return names


def layer_regex(arch: Architecture, suffixes: Iterable[str]) -> str:
    """A PEFT ``target_modules`` regex matching ``suffixes`` inside any block, and nothing else.

    PEFT full-matches a string ``target_modules`` against module names, so the regex is
    unambiguous where the bare suffix list is not.
    """
    layer = re.escape(arch.layer).replace(re.escape("{i}"), r"\d+")
    alternatives = "|".join(re.escape(s) for s in suffixes)
    return rf"{layer}\.({alternatives})"


def freeze_all(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter."""
    for param in model.parameters():
        param.requires_grad_(False)


def set_trainable(model: nn.Module, module_names: Iterable[str]) -> None:
    """Make every parameter below each named module trainable."""
    for name in module_names:
        for param in _get(model, name).parameters():
            param.requires_grad_(True)


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise MethodError(f"{type(model).__name__} has no module {name!r}") from None
