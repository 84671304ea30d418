"""Tiny random backbones for the tuning-method suite (built here, no hub access)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    CLIPConfig,
    Dinov2Config,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    ViTConfig,
)

from securefed.models.architecture import Architecture, get_architecture

_TEXT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    vocab_size=100,
    num_labels=3,
)
_IMAGE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    image_size=32,
    patch_size=8,
)


def _clip_config() -> PretrainedConfig:
    text = dict(_TEXT, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    text.pop("num_labels")
    return CLIPConfig(vision_config=dict(_IMAGE), text_config=text, num_labels=3)


CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "bert": lambda: BertConfig(**_TEXT),
    "roberta": lambda: RobertaConfig(**_TEXT, pad_token_id=1),
    "vit": lambda: ViTConfig(**_IMAGE, num_labels=3),
    "dinov2": lambda: Dinov2Config(**_IMAGE, num_labels=3),
    "clip": _clip_config,
}


@dataclass(frozen=True)
class Backbone:
    """Builds identical fresh copies of one tiny model, plus a fixed input batch."""

    model_type: str

    @property
    def arch(self) -> Architecture:
        return get_architecture(self.model_type)

    def model(self) -> PreTrainedModel:
        torch.manual_seed(1234)
        config = CONFIGS[self.model_type]()
        auto = (
            AutoModelForSequenceClassification
            if self.arch.modality == "text"
            else AutoModelForImageClassification
        )
        return auto.from_config(config).eval()

    def inputs(self, batch: int = 2) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(99)
        if self.arch.modality == "text":
            ids = torch.randint(3, 100, (batch, 7), generator=gen)
            mask = torch.ones_like(ids)
            mask[0, -2:] = 0  # exercise padding
            return {"input_ids": ids, "attention_mask": mask}
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=gen)}

    def labels(self, batch: int = 2) -> torch.Tensor:
        return torch.arange(batch) % 3


def logits(model: torch.nn.Module, backbone: Backbone) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**backbone.inputs()).logits


@pytest.fixture(params=sorted(CONFIGS))
def any_backbone(request: pytest.FixtureRequest) -> Backbone:
    return Backbone(request.param)
