"""LoRA: trainable low-rank factors beside frozen weights (arXiv 2106.09685), via PEFT.

A targeted weight ``W`` becomes ``W + (alpha / r) · B A`` with ``A ∈ R^{r×in}`` (random init)
and ``B ∈ R^{out×r}`` (zero init), so the model is unchanged at initialisation. Clients
send ``A`` and ``B``; the server can only average them separately, which is why LoRA's
aggregation is :attr:`~securefed.methods.base.Aggregation.FACTORWISE` and inexact under
the plain sums of secure aggregation: ``mean(B)·mean(A) != mean(B·A)`` (FFA-LoRA,
arXiv 2403.12313; SA-FedLoRA, arXiv 2405.09394).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, cast

from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from securefed.exceptions import ConfigError
from securefed.methods._peft import task_type
from securefed.methods.base import Aggregation as Agg
from securefed.methods.base import AggregationSemantics, TuningMethod, require_positive_int
from securefed.methods.registry import register_method
from securefed.models.architecture import Architecture

__all__ = ["FACTORWISE_SEMANTICS", "InitLoraWeights", "LoRA"]

#: The PEFT ``init_lora_weights`` values the LoRA family uses.
InitLoraWeights = bool | Literal["pissa"]

FACTORWISE_SEMANTICS = AggregationSemantics(
    Agg.FACTORWISE,
    exact_under_sum=False,
    description="LoRA factors A and B are averaged separately; mean(B)·mean(A) != mean(B·A)",
)


@register_method("lora")
@dataclass(frozen=True)
class LoRA(TuningMethod):
    """LoRA (arXiv 2106.09685) through PEFT, with the head in ``modules_to_save``.

    Parameters
    ----------
    r : int
        Rank of the update.
    alpha : float
        Scaling numerator; the update is scaled by ``alpha / r``.
    dropout : float
        Dropout on the LoRA branch input, in ``[0, 1)``.
    target_modules : tuple[str, ...] or None
        Leaf module names to adapt; ``None`` uses ``arch.lora_targets`` (query, value).
    """

    name: ClassVar[str] = "lora"
    semantics: ClassVar[AggregationSemantics] = FACTORWISE_SEMANTICS
    #: PEFT ``init_lora_weights``; subclasses change the initialisation.
    init_lora_weights: ClassVar[InitLoraWeights] = True

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        require_positive_int("r", self.r)
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, int | float)
            or not (math.isfinite(self.alpha) and self.alpha > 0)
        ):
            raise ConfigError(f"alpha must be a positive number, got {self.alpha!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not (0.0 <= self.dropout < 1.0)
        ):
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None:
            targets = tuple(self.target_modules)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ConfigError(
                    f"target_modules must be non-empty module names, got {self.target_modules!r}"
                )
            object.__setattr__(self, "target_modules", targets)

    def peft_native(self, arch: Architecture) -> bool:
        return True

    def lora_config(self, arch: Architecture) -> LoraConfig:
        """The PEFT config this method builds for ``arch``."""
        return LoraConfig(
            task_type=task_type(arch),
            r=self.r,
            # PEFT annotates int, but computes the scaling alpha / r in floating point
            lora_alpha=cast(int, self.alpha),
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules or arch.lora_targets),
            modules_to_save=list(arch.head),
            init_lora_weights=self.init_lora_weights,
        )

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        return get_peft_model(model, self.lora_config(arch))
