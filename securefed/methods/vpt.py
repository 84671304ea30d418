"""Visual prompt tuning, VPT-shallow (Jia et al., arXiv 2203.12119), in-house.

``num_tokens`` learned tokens are inserted right after the CLS token of the embeddings
output, i.e. ``[CLS, P_1..P_n, patch_1..patch_N]`` enters the first Transformer block, and
the backbone (position embeddings included) is unchanged. FedTune (arXiv 2211.08025)
tunes ViT and CLIP image encoders this way.

The tokens live in an ``nn.Embedding(num_tokens, hidden)`` that is *called* with
position indices expanded to the batch, so Opacus sees a regular embedding layer and
computes per-sample gradients. The module is registered as ``securefed_prompt`` on the
embeddings module and applied by a module-level forward hook on it.

Note: heads that pool over all non-CLS tokens (DINOv2 averages the patch tokens) then
also average over the prompt tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel

from securefed.exceptions import MethodError
from securefed.methods._modules import freeze_all, layer_prefixes, set_trainable
from securefed.models.architecture import Architecture

__all__ = ["PROMPT_ATTR", "VisualPrompt", "VisualPromptBackend", "hidden_size"]

#: Name of the child module of the embeddings module holding the prompt tokens.
PROMPT_ATTR = "securefed_prompt"


class VisualPrompt(nn.Module):
    """``num_tokens`` learned tokens inserted after the first (CLS) token.

    Parameters
    ----------
    num_tokens : int
        Number of prompt tokens.
    hidden : int
        Width of the hidden states.
    init_bound : float
        Tokens are drawn from ``U(-init_bound, init_bound)`` (VPT's Xavier-style init).
    """

    def __init__(self, num_tokens: int, hidden: int, init_bound: float) -> None:
        super().__init__()
        self.tokens = nn.Embedding(num_tokens, hidden)
        nn.init.uniform_(self.tokens.weight, -init_bound, init_bound)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        batch = embeddings.shape[0]
        positions = torch.arange(self.tokens.num_embeddings, device=embeddings.device)
        prompts = self.tokens(positions.unsqueeze(0).expand(batch, -1)).to(embeddings.dtype)
        return torch.cat([embeddings[:, :1], prompts, embeddings[:, 1:]], dim=1)


def _insert_prompts(module: nn.Module, inputs: object, output: object) -> torch.Tensor:
    """Forward hook on the embeddings module."""
    if not isinstance(output, torch.Tensor) or output.dim() != 3:
        raise MethodError(
            f"prompt: {type(module).__name__} must return (batch, tokens, hidden) hidden "
            f"states, got {type(output).__name__}"
        )
    prompt: nn.Module = getattr(module, PROMPT_ATTR)
    return prompt(output)


def hidden_size(model: nn.Module, arch: Architecture) -> int:
    """Width of the residual stream: the input width of the first block's key projection."""
    key = model.get_submodule(f"{layer_prefixes(model, arch)[0]}.{arch.key}")
    if not isinstance(key, nn.Linear):
        raise MethodError(f"{arch.key} of {arch.model_type!r} is not an nn.Linear")
    return key.in_features


def _init_bound(embeddings: nn.Module, hidden: int) -> float:
    """VPT's ``sqrt(6 / (channels · patch_area + hidden))``; Xavier on ``hidden`` otherwise."""
    for module in embeddings.modules():
        if isinstance(module, nn.Conv2d):
            fan = module.in_channels * math.prod(module.kernel_size)
            return math.sqrt(6.0 / (fan + hidden))
    return math.sqrt(3.0 / hidden)


class VisualPromptBackend:
    """Image backend of the ``prompt`` method (not PEFT-native)."""

    peft_native = False

    def apply(self, model: PreTrainedModel, arch: Architecture, num_tokens: int) -> nn.Module:
        freeze_all(model)
        embeddings = model.get_submodule(arch.embeddings)
        if hasattr(embeddings, PROMPT_ATTR):
            raise MethodError(f"prompt: {arch.embeddings} already has prompt tokens")
        hidden = hidden_size(model, arch)
        prompt = VisualPrompt(num_tokens, hidden, _init_bound(embeddings, hidden))
        ref = next(model.parameters())
        prompt.to(device=ref.device, dtype=ref.dtype)
        embeddings.add_module(PROMPT_ATTR, prompt)
        embeddings.register_forward_hook(_insert_prompts)
        set_trainable(model, arch.head)
        return model
