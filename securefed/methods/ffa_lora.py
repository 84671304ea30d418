"""FFA-LoRA: LoRA with ``A`` frozen at a shared random init (arXiv 2403.12313).

Every client builds the same ``A`` from the shared seed, and only ``B`` (plus the head) is
trained and sent. Since ``A`` is fixed and identical everywhere, the update
``(alpha / r) · B A`` is linear in ``B``: averaging ``B`` averages the updates exactly, so
the method stays exact under secure aggregation's plain sums, and DP noise on ``B`` is not
amplified by a product of two noisy factors (the paper's motivation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from transformers import PreTrainedModel

from securefed.methods.base import Aggregation, AggregationSemantics
from securefed.methods.lora import LoRA
from securefed.methods.registry import register_method
from securefed.models.architecture import Architecture

__all__ = ["FFALoRA"]


@register_method("ffa-lora")
@dataclass(frozen=True)
class FFALoRA(LoRA):
    """LoRA whose ``A`` factors are frozen at their seeded init (arXiv 2403.12313).

    Parameters are those of :class:`~securefed.methods.lora.LoRA`. The seed passed to
    :meth:`apply` must be the same on every client (and the server), because ``A`` is never
    sent.
    """

    name: ClassVar[str] = "ffa-lora"
    semantics: ClassVar[AggregationSemantics] = AggregationSemantics(
        Aggregation.LINEAR,
        exact_under_sum=True,
        description="only B is averaged; A is fixed and shared, so B·A is linear in B",
    )

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        peft_model = super()._apply(model, arch)
        for name, param in peft_model.named_parameters():
            if ".lora_A." in name:
                param.requires_grad_(False)
        return peft_model
