"""Bottleneck adapters (Houlsby et al., arXiv 1902.00751), written in-house.

Each Transformer block gets two adapters: one after the attention output projection
(``arch.attention_out``) and one after the feed-forward output projection
(``arch.ffn_out``), i.e. before the residual connection and layer norm, where Houlsby et al.
place them. An adapter maps ``h ↦ h + up(σ(down(h)))`` with ``down: d → m`` and
``up: m → d``; ``up`` is zero-initialised, so the model is unchanged at init.

The adapter is registered as a child module ``securefed_adapter`` of the projection it
follows, and run by a forward hook on that projection. The base parameter names stay
those of the Hugging Face model, the adapter layers are plain ``nn.Linear`` modules called
as modules (so Opacus computes their per-sample gradients), and the hook is a module-level
function, so ``copy.deepcopy`` of the model keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from securefed.exceptions import ConfigError, MethodError
from securefed.methods._modules import freeze_all, layer_module_names, set_trainable
from securefed.methods.base import TuningMethod, require_positive_int
from securefed.methods.registry import register_method
from securefed.models.architecture import Architecture

__all__ = ["ACTIVATIONS", "ADAPTER_ATTR", "Adapter", "BottleneckAdapter"]

#: Name of the child module holding an adapter on the projection it follows.
ADAPTER_ATTR = "securefed_adapter"

#: Nonlinearities an adapter may use, by name.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class BottleneckAdapter(nn.Module):
    """``h ↦ h + up(σ(down(h)))`` with a zero-initialised ``up`` (arXiv 1902.00751).

    Parameters
    ----------
    hidden : int
        Width ``d`` of the hidden states.
    bottleneck : int
        Width ``m`` of the bottleneck.
    activation : str
        Key of :data:`ACTIVATIONS`.
    """

    def __init__(self, hidden: int, bottleneck: int, activation: str = "gelu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.up(self.act(self.down(hidden_states)))


def _run_adapter(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: pass the projection's output through its adapter."""
    adapter: nn.Module = getattr(module, ADAPTER_ATTR)
    return adapter(output)


@register_method("adapter")
@dataclass(frozen=True)
class Adapter(TuningMethod):
    """Houlsby bottleneck adapters after attention and feed-forward (arXiv 1902.00751).

    Parameters
    ----------
    bottleneck : int
        Bottleneck width ``m`` of every adapter.
    activation : str
        Nonlinearity, a key of :data:`ACTIVATIONS`.
    """

    name: ClassVar[str] = "adapter"
    bottleneck: int = 64
    activation: str = "gelu"

    def __post_init__(self) -> None:
        require_positive_int("bottleneck", self.bottleneck)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        freeze_all(model)
        names = layer_module_names(model, arch, arch.attention_out)
        names += layer_module_names(model, arch, arch.ffn_out)
        for name in names:
            target = model.get_submodule(name)
            if not isinstance(target, nn.Linear):
                raise MethodError(f"adapter: {name} is a {type(target).__name__}, not nn.Linear")
            if hasattr(target, ADAPTER_ATTR):
                raise MethodError(f"adapter: {name} already has an adapter")
            adapter = BottleneckAdapter(target.out_features, self.bottleneck, self.activation)
            adapter.to(device=target.weight.device, dtype=target.weight.dtype)
            target.add_module(ADAPTER_ATTR, adapter)
            target.register_forward_hook(_run_adapter)
        set_trainable(model, arch.head)
        return model
