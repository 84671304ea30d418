"""Linear probe: only the task head (``arch.head``) is trained and sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from transformers import PreTrainedModel

from securefed.methods._modules import freeze_all, set_trainable
from securefed.methods.base import TuningMethod
from securefed.methods.registry import register_method
from securefed.models.architecture import Architecture

__all__ = ["HeadOnly"]


@register_method("head")
@dataclass(frozen=True)
class HeadOnly(TuningMethod):
    """Train only the task head: a linear probe of the frozen backbone."""

    name: ClassVar[str] = "head"

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        freeze_all(model)
        set_trainable(model, arch.head)
        return model
