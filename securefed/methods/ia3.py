"""(IA)³: learned vectors that rescale keys, values and feed-forward activations.

Liu et al., arXiv 2205.05638. Keys and values are multiplied element-wise by learned
vectors ``l_k``, ``l_v``; the feed-forward block's inner activation by ``l_ff`` (applied
to the *input* of the down projection ``ffn_out``). The vectors start at one, so the model
is unchanged at init. Built by PEFT's ``IA3Config`` on text and image backbones alike.

Target modules are given to PEFT as a regex anchored on the block template of
``Architecture.layer``: the bare suffix ``output.dense`` (BERT's ``ffn_out``) would also
match ``attention.output.dense``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peft import IA3Config, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from securefed.exceptions import ConfigError
from securefed.methods._modules import layer_module_names, layer_regex
from securefed.methods._peft import task_type
from securefed.methods.base import TuningMethod
from securefed.methods.registry import register_method
from securefed.models.architecture import Architecture

__all__ = ["IA3", "ROLES"]

#: Projection roles an ``Architecture`` names (its field names).
ROLES = ("query", "key", "value", "attention_out", "ffn_in", "ffn_out")


@register_method("ia3")
@dataclass(frozen=True)
class IA3(TuningMethod):
    """(IA)³ (arXiv 2205.05638) through PEFT, with the head in ``modules_to_save``.

    Parameters
    ----------
    targets : tuple[str, ...]
        Projection roles to rescale (``Architecture`` field names).
    feedforward : tuple[str, ...]
        Subset of ``targets`` whose *input* is rescaled (the feed-forward activation).
    """

    name: ClassVar[str] = "ia3"
    targets: tuple[str, ...] = ("key", "value", "ffn_out")
    feedforward: tuple[str, ...] = ("ffn_out",)

    def __post_init__(self) -> None:
        for field in ("targets", "feedforward"):
            roles = tuple(getattr(self, field))
            bad = [r for r in roles if r not in ROLES]
            if bad:
                raise ConfigError(
                    f"{field} has unknown role(s) {bad} in {roles!r}; valid roles: {ROLES}"
                )
            object.__setattr__(self, field, roles)
        if not self.targets:
            raise ConfigError(f"targets must name at least one role, got {self.targets!r}")
        extra = [r for r in self.feedforward if r not in self.targets]
        if extra:
            raise ConfigError(f"feedforward role(s) {extra} are not in targets {self.targets}")

    def peft_native(self, arch: Architecture) -> bool:
        return True

    def ia3_config(self, arch: Architecture) -> IA3Config:
        """The PEFT config this method builds for ``arch``."""
        suffixes = [getattr(arch, role) for role in self.targets]
        feedforward = [getattr(arch, role) for role in self.feedforward]
        return IA3Config(
            task_type=task_type(arch),
            target_modules=layer_regex(arch, suffixes),
            feedforward_modules=layer_regex(arch, feedforward) if feedforward else [],
            modules_to_save=list(arch.head),
        )

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        for role in self.targets:  # fail early, naming the module, if the layout is wrong
            layer_module_names(model, arch, getattr(arch, role))
        return get_peft_model(model, self.ia3_config(arch))
