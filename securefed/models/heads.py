"""Task heads on resolved backbones, and the matching pre-processing.

:func:`build_classifier` loads a :class:`~securefed.models.backbones.Backbone` with a
new sequence- or image-classification head:

* text backbones load through ``AutoModelForSequenceClassification``;
* image backbones through ``AutoModelForImageClassification``; for CLIP that is
  ``CLIPForImageClassification``, which keeps the vision tower only (as FedTune,
  arXiv 2211.08025, does for CLIP), so text-tower weights are dropped.

The head (the modules named by ``architecture.head``) is re-initialised from a
:class:`torch.Generator` seeded with ``seed``; the whole load runs inside
:func:`torch.random.fork_rng`, so the caller's global RNG state is left untouched and
two calls with the same seed give identical models. Transformers' "newly initialized
weights" report is silenced, but the loading info is checked instead: a missing or
mis-shaped **backbone** weight is an :class:`~securefed.exceptions.AssetError`, never a
silently random layer.

:func:`load_preprocessor` returns the tokenizer (text) or an :class:`ImageSpec`
(image: normalisation and input size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import cached_file

from securefed.exceptions import AssetError, ConfigError
from securefed.models._hf import IMAGENET_MEAN, IMAGENET_STD, quiet_transformers
from securefed.models.backbones import Backbone

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageSpec", "build_classifier", "load_preprocessor"]

_DEFAULT_SIZE = 224

# Task auto-class per modality (a table, not an if-chain).
_TASK_MODELS: dict[str, Any] = {
    "text": AutoModelForSequenceClassification,
    "image": AutoModelForImageClassification,
}


@dataclass(frozen=True)
class ImageSpec:
    """How images must be prepared for an image backbone.

    Attributes
    ----------
    mean, std : tuple[float, ...]
        Per-channel normalisation, applied to pixels scaled to ``[0, 1]``.
    size : int
        Side of the square input the backbone expects, in pixels.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise ConfigError(f"mean {self.mean!r} and std {self.std!r} need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"size must be a positive int, got {self.size!r}")


def build_classifier(
    backbone: Backbone,
    num_labels: int,
    *,
    seed: int = 0,
    id2label: dict[int, str] | None = None,
) -> PreTrainedModel:
    """Load ``backbone`` with a new classification head of ``num_labels`` outputs.

    Any head already in the checkpoint (e.g. a hub model fine-tuned on another task) is
    discarded: the head is always freshly initialised from ``seed``.

    Parameters
    ----------
    backbone : Backbone
        From :func:`~securefed.models.backbones.resolve_backbone`.
    num_labels : int
        Number of classes (>= 1); stored in ``model.config.num_labels``.
    seed : int
        Seed of the head's initialisation; the same seed gives the same head.
    id2label : dict[int, str], optional
        Class names for ids ``0 .. num_labels - 1``; defaults to ``LABEL_i``. Stored
        in ``model.config`` with the matching ``label2id``.

    Returns
    -------
    transformers.PreTrainedModel
        In float32, in the mode ``from_pretrained`` returns (eval).

    Raises
    ------
    ConfigError
        Bad ``num_labels`` or ``id2label``.
    AssetError
        The checkpoint lacks backbone weights, or has them with the wrong shapes.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ConfigError(f"num_labels must be a positive int, got {num_labels!r}")
    labels = {i: f"LABEL_{i}" for i in range(num_labels)} if id2label is None else dict(id2label)
    if sorted(labels) != list(range(num_labels)):
        raise ConfigError(f"id2label must have keys 0..{num_labels - 1}, got {sorted(labels)}")
    auto = _TASK_MODELS[backbone.modality]
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        model, info = auto.from_pretrained(
            backbone.path,
            num_labels=num_labels,
            id2label=labels,
            label2id={name: i for i, name in labels.items()},
            dtype=torch.float32,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    head = backbone.architecture.head
    _check_loaded(backbone, head, info)
    generator = torch.Generator().manual_seed(seed)
    std = _init_std(model.config)
    with torch.no_grad():
        for name in head:
            _reinit(model.get_submodule(name), generator, std)
    return model


def load_preprocessor(backbone: Backbone) -> PreTrainedTokenizerBase | ImageSpec:
    """Return the tokenizer (text) or the :class:`ImageSpec` (image) of ``backbone``.

    Image specs are read from ``preprocessor_config.json`` (``image_mean``,
    ``image_std``, and ``crop_size`` or ``size``) when present; missing values fall
    back to the ImageNet statistics and the config's ``image_size``.
    """
    loader = _PREPROCESSORS[backbone.modality]
    return loader(backbone)


def _check_loaded(backbone: Backbone, head: tuple[str, ...], info: dict[str, Any]) -> None:
    def outside_head(keys: Any) -> list[str]:
        names = [k[0] if isinstance(k, tuple) else k for k in keys or ()]
        return sorted(k for k in names if not any(k.startswith(f"{h}.") for h in head))

    missing = outside_head(info.get("missing_keys"))
    mismatched = outside_head(info.get("mismatched_keys"))
    if missing or mismatched:
        raise AssetError(
            f"{backbone.path}: the checkpoint does not fit a {backbone.model_type!r} "
            f"classifier; missing backbone weights {missing[:5]}, wrong shapes {mismatched[:5]}"
        )


def _init_std(config: Any) -> float:
    std = getattr(config, "initializer_range", None)
    if std is None:  # CLIP keeps it on the vision sub-config
        std = getattr(getattr(config, "vision_config", None), "initializer_range", None)
    return float(std) if std is not None else 0.02


def _reinit(module: nn.Module, generator: torch.Generator, std: float) -> None:
    """Re-initialise every parameter of ``module`` the way HF initialises heads."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, mean=0.0, std=std, generator=generator)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            if sub.weight is not None:
                nn.init.ones_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif any(True for _ in sub.parameters(recurse=False)):
            raise ConfigError(f"cannot initialise head module of type {type(sub).__name__}")


def _tokenizer(backbone: Backbone) -> PreTrainedTokenizerBase:
    with quiet_transformers():
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(backbone.path)
    return tokenizer


def _image_spec(backbone: Backbone) -> ImageSpec:
    found = cached_file(
        backbone.path,
        "preprocessor_config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    spec: dict[str, Any] = json.loads(Path(found).read_text()) if found else {}
    mean = tuple(float(v) for v in spec.get("image_mean") or IMAGENET_MEAN)
    std = tuple(float(v) for v in spec.get("image_std") or IMAGENET_STD)
    size = _side(spec.get("crop_size") if spec.get("do_center_crop", True) else None)
    size = size or _side(spec.get("size")) or _config_image_size(backbone)
    return ImageSpec(mean=mean, std=std, size=size)


def _side(value: Any) -> int | None:
    """Square side from an HF ``size``/``crop_size`` entry (int or dict), if any."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if isinstance(value.get(key), int):
                return int(value[key])
    return None


def _config_image_size(backbone: Backbone) -> int:
    with quiet_transformers():
        config = AutoConfig.from_pretrained(backbone.path)
    vision = getattr(config, "vision_config", config)
    size = getattr(vision, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size else _DEFAULT_SIZE


_PREPROCESSORS: dict[str, Any] = {"text": _tokenizer, "image": _image_spec}
