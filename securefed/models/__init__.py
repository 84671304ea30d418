"""Backbones (by alias, local folder or hub id), task heads and tiny test models.

Typical use::

    from securefed.models import build_classifier, load_preprocessor, resolve_backbone

    backbone = resolve_backbone("minilm-l6")      # or "dinov2-s", a folder, a hub id
    model = build_classifier(backbone, num_labels=5, seed=0)
    tokenizer = load_preprocessor(backbone)

See :mod:`securefed.models.backbones` for the resolution order,
:mod:`securefed.models.dinov2_onnx` for the provenance of ``dinov2-s``, and
:mod:`securefed.models.architecture` for where each family's tunable modules live.
"""

from securefed.models.architecture import ARCHITECTURES, Architecture, get_architecture
from securefed.models.backbones import (
    BACKBONES,
    Backbone,
    BackboneResolver,
    default_cache_dir,
    register_backbone,
    resolve_backbone,
)
from securefed.models.heads import ImageSpec, build_classifier, load_preprocessor
from securefed.models.tiny import TINY_WRITERS, write_tiny_backbone

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "TINY_WRITERS",
    "Architecture",
    "Backbone",
    "BackboneResolver",
    "ImageSpec",
    "build_classifier",
    "default_cache_dir",
    "get_architecture",
    "load_preprocessor",
    "register_backbone",
    "resolve_backbone",
    "write_tiny_backbone",
]
