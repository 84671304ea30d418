"""Soft prompt tuning: learned input tokens in front of a frozen backbone.

* Text backbones: PEFT prompt tuning (Lester et al., arXiv 2104.08691), ``num_tokens``
  virtual tokens prepended to the word embeddings; PEFT-native.
* Image backbones: visual prompt tuning, VPT-shallow (Jia et al., arXiv 2203.12119), as
  used by FedTune (arXiv 2211.08025): ``num_tokens`` learned tokens inserted after the
  CLS token of the patch embeddings; in-house, see :mod:`securefed.methods.vpt`.

The backend is chosen by ``Architecture.modality`` through :data:`PROMPT_BACKENDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peft import PromptTuningConfig, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from securefed.methods._peft import task_type
from securefed.methods.base import (
    ModalityBackend,
    TuningMethod,
    backend_for,
    require_positive_int,
)
from securefed.methods.registry import register_method
from securefed.methods.vpt import VisualPromptBackend
from securefed.models.architecture import Architecture

__all__ = ["PROMPT_BACKENDS", "PeftPromptBackend", "PromptTuning"]


class PeftPromptBackend:
    """PEFT prompt tuning (arXiv 2104.08691) with the head in ``modules_to_save``."""

    peft_native = True

    def apply(self, model: PreTrainedModel, arch: Architecture, num_tokens: int) -> nn.Module:
        config = PromptTuningConfig(
            task_type=task_type(arch),
            num_virtual_tokens=num_tokens,
            modules_to_save=list(arch.head),
        )
        return get_peft_model(model, config)


#: Prompt-tuning implementation by backbone modality.
PROMPT_BACKENDS: dict[str, ModalityBackend] = {
    "text": PeftPromptBackend(),
    "image": VisualPromptBackend(),
}


@register_method("prompt")
@dataclass(frozen=True)
class PromptTuning(TuningMethod):
    """Soft prompt tuning (arXiv 2104.08691 for text, VPT arXiv 2203.12119 for images).

    Parameters
    ----------
    num_tokens : int
        Number of learned prompt tokens.
    """

    name: ClassVar[str] = "prompt"
    num_tokens: int = 16

    def __post_init__(self) -> None:
        require_positive_int("num_tokens", self.num_tokens)

    def peft_native(self, arch: Architecture) -> bool:
        return backend_for(PROMPT_BACKENDS, arch, self.name).peft_native

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        return backend_for(PROMPT_BACKENDS, arch, self.name).apply(model, arch, self.num_tokens)
