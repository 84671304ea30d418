"""BitFit: every bias term plus the head is trained (arXiv 2106.10199).

FedTune (arXiv 2211.08025) uses it as its bias-tuning baseline. LayerNorm biases count as
bias terms, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from transformers import PreTrainedModel

from securefed.methods._modules import freeze_all, set_trainable
from securefed.methods.base import TuningMethod
from securefed.methods.registry import register_method
from securefed.models.architecture import Architecture

__all__ = ["BitFit"]


@register_method("bitfit")
@dataclass(frozen=True)
class BitFit(TuningMethod):
    """Train every bias term and the head (BitFit, arXiv 2106.10199)."""

    name: ClassVar[str] = "bitfit"

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        freeze_all(model)
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                param.requires_grad_(True)
        set_trainable(model, arch.head)
        return model
