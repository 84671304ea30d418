"""Full fine-tuning: every parameter is trained and sent.

FedTune's full fine-tuning baseline (arXiv 2211.08025). ``freeze_embeddings=True`` keeps the
embeddings frozen, which DP-SGD with Opacus needs: its per-sample gradients fail on BERT's
embedding layers (see ``docs/privacy.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from transformers import PreTrainedModel

from securefed.exceptions import ConfigError
from securefed.methods.base import TuningMethod
from securefed.methods.registry import register_method
from securefed.models.architecture import Architecture

__all__ = ["FullFineTuning"]


@register_method("full")
@dataclass(frozen=True)
class FullFineTuning(TuningMethod):
    """Train every parameter (FedTune's full fine-tuning baseline, arXiv 2211.08025).

    Parameters
    ----------
    freeze_embeddings : bool
        Keep ``arch.embeddings`` frozen (needed for DP-SGD with Opacus).
    """

    name: ClassVar[str] = "full"
    freeze_embeddings: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.freeze_embeddings, bool):
            raise ConfigError(f"freeze_embeddings must be a bool, got {self.freeze_embeddings!r}")

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        if self.freeze_embeddings:
            for param in model.get_submodule(arch.embeddings).parameters():
                param.requires_grad_(False)
        return model
