"""Prefix tuning: learned key/value vectors prepended in every attention layer.

Li & Liang, arXiv 2101.00190. Each layer's attention sees ``num_tokens`` extra learned
keys and values that every query may attend to; queries and the sequence length of the
output are unchanged.

* Text backbones: PEFT ``PrefixTuningConfig`` (passed to the model as past key/values);
  PEFT-native.
* Image backbones: in-house, see :mod:`securefed.methods.image_prefix`.

The backend is chosen by ``Architecture.modality`` through :data:`PREFIX_BACKENDS`.
Unlike the paper, the prefixes are trained directly, without the MLP re-parametrisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peft import PrefixTuningConfig, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from securefed.methods._peft import task_type
from securefed.methods.base import (
    ModalityBackend,
    TuningMethod,
    backend_for,
    require_positive_int,
)
from securefed.methods.image_prefix import AttentionPrefixBackend
from securefed.methods.registry import register_method
from securefed.models.architecture import Architecture

__all__ = ["PREFIX_BACKENDS", "PeftPrefixBackend", "PrefixTuning"]


class PeftPrefixBackend:
    """PEFT prefix tuning (arXiv 2101.00190) with the head in ``modules_to_save``."""

    peft_native = True

    def apply(self, model: PreTrainedModel, arch: Architecture, num_tokens: int) -> nn.Module:
        config = PrefixTuningConfig(
            task_type=task_type(arch),
            num_virtual_tokens=num_tokens,
            prefix_projection=False,
            modules_to_save=list(arch.head),
        )
        return get_peft_model(model, config)


#: Prefix-tuning implementation by backbone modality.
PREFIX_BACKENDS: dict[str, ModalityBackend] = {
    "text": PeftPrefixBackend(),
    "image": AttentionPrefixBackend(),
}


@register_method("prefix")
@dataclass(frozen=True)
class PrefixTuning(TuningMethod):
    """Prefix tuning (arXiv 2101.00190): per-layer learned keys and values.

    Parameters
    ----------
    num_tokens : int
        Number of prefix positions per layer.
    """

    name: ClassVar[str] = "prefix"
    num_tokens: int = 16

    def __post_init__(self) -> None:
        require_positive_int("num_tokens", self.num_tokens)

    def peft_native(self, arch: Architecture) -> bool:
        return backend_for(PREFIX_BACKENDS, arch, self.name).peft_native

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        return backend_for(PREFIX_BACKENDS, arch, self.name).apply(model, arch, self.num_tokens)
