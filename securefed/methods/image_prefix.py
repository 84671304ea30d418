"""Prefix tuning for image Transformers (Li & Liang, arXiv 2101.00190), in-house.

Every attention layer gets ``num_tokens`` learned key and value vectors prepended along
the sequence axis, so each query also attends to the prefix; the output keeps the query
length. Vision encoders (ViT, DINOv2, CLIP-vision) use no attention mask, so keys and
values longer than the queries are fine.

Why not forward hooks on the key/value projections: in transformers 5.23 the attention
modules reshape the projection outputs with ``hidden_shape = (*input_shape, -1,
head_dim)`` where ``input_shape`` is the *query's* ``(batch, seq)``; the ``-1`` is the head
axis, so a longer key would be folded into the heads silently (or fail). Instead we use
transformers' documented extension point, the ``AttentionInterface``: the model is
switched to the registered implementation ``"securefed_prefix"``, which concatenates the
layer's prefix to the already reshaped ``(batch, heads, seq, head_dim)`` keys and values
and then calls the model's original implementation (``sdpa``, ``eager``, ...).

The prefixes live in two ``nn.Embedding(num_tokens, heads · head_dim)`` per layer (module
``securefed_prefix`` on each attention module), called with batch-expanded indices so
Opacus computes per-sample gradients.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from securefed.exceptions import MethodError
from securefed.methods._modules import freeze_all, layer_prefixes, set_trainable
from securefed.models.architecture import Architecture

__all__ = ["ATTENTION_IMPLEMENTATION", "PREFIX_ATTR", "AttentionPrefix", "AttentionPrefixBackend"]

#: Name of the child module of each attention module holding its prefix.
PREFIX_ATTR = "securefed_prefix"
#: Name under which the prefix attention is registered in transformers' AttentionInterface.
ATTENTION_IMPLEMENTATION = "securefed_prefix"


class AttentionPrefix(nn.Module):
    """Learned prefix keys and values of one attention layer.

    Parameters
    ----------
    num_tokens : int
        Prefix length.
    num_heads, head_dim : int
        Attention geometry of the layer.
    inner : str
        The attention implementation the layer used before (called after prepending).
    """

    def __init__(self, num_tokens: int, num_heads: int, head_dim: int, inner: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.inner = inner
        self.key = nn.Embedding(num_tokens, num_heads * head_dim)
        self.value = nn.Embedding(num_tokens, num_heads * head_dim)
        for table in (self.key, self.value):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix keys and values shaped ``(batch, heads, num_tokens, head_dim)``."""
        tokens = self.key.num_embeddings
        positions = torch.arange(tokens, device=like.device).unsqueeze(0).expand(batch, -1)
        shape = (batch, tokens, self.num_heads, self.head_dim)
        key = self.key(positions).view(shape).transpose(1, 2).to(like.dtype)
        value = self.value(positions).view(shape).transpose(1, 2).to(like.dtype)
        return key, value


def _inner_attention(module: nn.Module, name: str) -> Callable[..., Any]:
    if name == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise MethodError(f"prefix: no eager attention for {type(module).__name__}")
        return eager  # type: ignore[no-any-return]
    return ALL_ATTENTION_FUNCTIONS[name]  # type: ignore[no-any-return]


def _extend_mask(mask: torch.Tensor, tokens: int) -> torch.Tensor:
    """Let every query attend to the prefix: pad the key axis of an attention mask."""
    if mask.shape[-1] == 1:
        return mask
    fill = True if mask.dtype == torch.bool else 0.0
    return F.pad(mask, (tokens, 0), value=fill)


def prefix_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> Any:
    """``AttentionInterface`` function: prepend the layer's prefix, then run the original."""
    prefix = getattr(module, PREFIX_ATTR, None)
    if not isinstance(prefix, AttentionPrefix):
        return _inner_attention(module, "sdpa")(module, query, key, value, attention_mask, **kwargs)
    prefix_key, prefix_value = prefix(query.shape[0], key)
    key = torch.cat([prefix_key, key], dim=2)
    value = torch.cat([prefix_value, value], dim=2)
    if attention_mask is not None:
        attention_mask = _extend_mask(attention_mask, prefix.key.num_embeddings)
    inner = _inner_attention(module, prefix.inner)
    return inner(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTENTION_IMPLEMENTATION, prefix_attention_forward)


class AttentionPrefixBackend:
    """Image backend of the ``prefix`` method (not PEFT-native)."""

    peft_native = False

    def apply(self, model: PreTrainedModel, arch: Architecture, num_tokens: int) -> nn.Module:
        freeze_all(model)
        attention_path = arch.key.rsplit(".", 1)[0]
        patched_configs: set[int] = set()
        for layer in layer_prefixes(model, arch):
            attention = model.get_submodule(f"{layer}.{attention_path}")
            key_proj = model.get_submodule(f"{layer}.{arch.key}")
            head_dim = getattr(attention, "head_dim", None)
            if not isinstance(key_proj, nn.Linear) or not isinstance(head_dim, int):
                raise MethodError(
                    f"prefix: {layer}.{attention_path} has no head_dim / nn.Linear key projection"
                )
            if hasattr(attention, PREFIX_ATTR):
                raise MethodError(f"prefix: {layer}.{attention_path} already has a prefix")
            config = getattr(attention, "config", model.config)
            inner = getattr(config, "_attn_implementation", None) or "sdpa"
            patched_configs.add(id(config))
            prefix = AttentionPrefix(num_tokens, key_proj.out_features // head_dim, head_dim, inner)
            prefix.to(device=key_proj.weight.device, dtype=key_proj.weight.dtype)
            attention.add_module(PREFIX_ATTR, prefix)
        model.set_attn_implementation(_request(model, patched_configs))
        set_trainable(model, arch.head)
        return model


def _request(model: PreTrainedModel, patched: set[int]) -> dict[str, str]:
    """``set_attn_implementation`` argument switching only the patched (sub-)configs.

    CLIP's config also carries a ``text_config`` with no module in an image classifier;
    it keeps its own implementation (switching it would only make transformers warn).
    """
    request = {"": ATTENTION_IMPLEMENTATION}
    for key in getattr(model.config, "sub_configs", {}):
        sub = getattr(model.config, key, None)
        if sub is not None:
            own = sub._attn_implementation
            request[key] = ATTENTION_IMPLEMENTATION if id(sub) in patched else own
    return request
