"""Exporting a tuned model, and rebuilding it from the export.

Every export directory holds ``securefed_method.json`` plus the weights, in one of two
formats.

``securefed_method.json``
    ``{"securefed_export_version": 1, "method": <registered name>, "params": {<hyper-
    parameters, as create_method takes them>}, "format": "peft" | "securefed-safetensors",
    "weights": <weight file name>, "tensors": {<key>: [<shape>...]}, ...}``. Methods may add
    keys (FeDeRA adds ``"converted_from": "pissa"``).

``format = "peft"`` (lora, ffa-lora, federa, ia3, and prompt / prefix on text backbones)
    ``adapter_config.json`` and ``adapter_model.safetensors`` written by PEFT's
    ``save_pretrained``, so stock ``PeftModel.from_pretrained(base_model, out_dir)`` loads
    them on an unmodified base model. The task head travels in ``modules_to_save``.

``format = "securefed-safetensors"`` (full, head, bitfit, adapter, and prompt / prefix on
image backbones)
    ``adapter.safetensors``: one float32 tensor per payload key, stored under exactly that
    key (``TuningMethod.payload``'s parameter names, e.g.
    ``bert.encoder.layer.0.attention.output.dense.securefed_adapter.down.weight``). To
    rebuild: ``method = create_method(method, **params)``; ``model = method.apply(base,
    arch)``; ``method.load_payload(model, tensors)``; :func:`load_exported` does this.
    Every trainable tensor is in the file, so the result does not depend on the apply seed.

The base model is recorded by name, never by a local path
    :func:`finish_export` replaces an absolute ``base_model_name_or_path`` that PEFT took
    from the loaded model (a folder in the virtualenv or the cache) by the folder's name,
    in ``adapter_config.json`` and PEFT's ``README.md`` model card. :func:`record_base`
    (called by the ServerApp for a run's adapter) then writes the backbone as the run named
    it: a securefed alias (``"minilm-l6"``), a hub id, or, for a local folder, its name
    only, into those files and as ``"base_model": {"name", "source", "model_type",
    "modality"}`` into ``securefed_method.json``, beside ``"task"`` (dataset, label names,
    encoding and held-out split settings). :func:`securefed.adapters.load_adapter` resolves
    the name back with :func:`securefed.models.resolve_backbone`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from torch import nn
from transformers import PreTrainedModel

from securefed.exceptions import PayloadError
from securefed.methods._modules import unwrap
from securefed.methods.base import ExportInfo, TuningMethod
from securefed.models.architecture import Architecture

__all__ = [
    "EXPORT_VERSION",
    "LOADERS",
    "METADATA_FILE",
    "PEFT_FORMAT",
    "PEFT_WEIGHTS",
    "SAFETENSORS_FORMAT",
    "SAFETENSORS_WEIGHTS",
    "export_model",
    "finish_export",
    "load_exported",
    "read_metadata",
    "record_base",
]

EXPORT_VERSION = 1
METADATA_FILE = "securefed_method.json"
PEFT_FORMAT = "peft"
PEFT_WEIGHTS = "adapter_model.safetensors"
SAFETENSORS_FORMAT = "securefed-safetensors"
SAFETENSORS_WEIGHTS = "adapter.safetensors"
PEFT_CONFIG = "adapter_config.json"
MODEL_CARD = "README.md"
BASE_SOURCES = ("alias", "hub", "local")
_CARD_BASE_LINES = (re.compile(r"(?m)^(base_model:[ \t]*).*$"),
                    re.compile(r"(?m)^(\s*-\s*base_model:adapter:).*$"))


def _set_base_name(out_dir: Path, new: Callable[[str], str]) -> None:
    """Rewrite PEFT's ``base_model_name_or_path`` as ``new(old)``, in the config and card."""
    config_path = out_dir / PEFT_CONFIG
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    old = config.get("base_model_name_or_path")
    if not isinstance(old, str) or not old:
        return
    name = new(old)
    config["base_model_name_or_path"] = name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = out_dir / MODEL_CARD
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        if Path(old).is_absolute():
            text = text.replace(old, name)
        for pattern in _CARD_BASE_LINES:  # the YAML header's base_model and its tag
            text = pattern.sub(lambda m: m.group(1) + name, text)
        card.write_text(text, encoding="utf-8")


def _no_local_path(name: str) -> str:
    """A local folder by its last component; an alias or hub id unchanged."""
    path = Path(name)
    return path.name if path.is_absolute() or path.exists() else name


def finish_export(
    method: TuningMethod,
    out_dir: Path,
    fmt: str,
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    extra: Mapping[str, Any] | None = None,
) -> ExportInfo:
    """Write ``securefed_method.json`` for weights already in ``out_dir``; describe the export."""
    weights = PEFT_WEIGHTS if fmt == PEFT_FORMAT else SAFETENSORS_WEIGHTS
    _set_base_name(out_dir, _no_local_path)  # never a local path (PEFT writes the folder)
    meta: dict[str, Any] = {
        "securefed_export_version": EXPORT_VERSION,
        "method": method.name,
        "params": method.params(),
        "format": fmt,
        "weights": weights,
        "tensors": {key: list(t.shape) for key, t in tensors.items()},
        **(extra or {}),
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    nbytes = sum(int(np.prod(t.shape)) * 4 for t in tensors.values())
    return ExportInfo(
        method=method.name,
        format=fmt,
        directory=out_dir,
        files=tuple(sorted(p.name for p in out_dir.iterdir() if p.is_file())),
        num_tensors=len(tensors),
        nbytes=nbytes,
    )


def export_model(method: TuningMethod, model: nn.Module, out_dir: Path) -> ExportInfo:
    """Default :meth:`TuningMethod.export`: PEFT's ``save_pretrained`` or the safetensors layout.

    The format follows the model: a ``PeftModel`` is saved by PEFT, anything else as
    ``adapter.safetensors`` holding the payload.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    inner = unwrap(model)
    if isinstance(inner, PeftModel):
        inner.save_pretrained(str(out_dir))
        return finish_export(method, out_dir, PEFT_FORMAT, load_torch(str(out_dir / PEFT_WEIGHTS)))
    payload = method.payload(inner)
    save_numpy(payload, str(out_dir / SAFETENSORS_WEIGHTS), metadata={"format": "securefed"})
    return finish_export(method, out_dir, SAFETENSORS_FORMAT, payload)


def record_base(out_dir: Path, base: Mapping[str, Any],
                task: Mapping[str, Any] | None = None) -> None:
    """Record the base model (and the task) of an export already in ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        An export directory (``securefed_method.json`` present).
    base : mapping
        ``{"name": alias | hub id | folder name, "source": "alias" | "hub" | "local",
        "model_type": ..., "modality": ...}``; ``name`` must not be an absolute path.
    task : mapping, optional
        What the head was trained for: ``dataset``, ``label_names``, ``max_length``,
        ``image_size`` and the held-out split settings (``seed``, ``test_fraction``,
        ``max_train``, ``max_test``).

    Raises
    ------
    PayloadError
        If ``base`` lacks a name or source, or names an absolute path.
    """
    name, source = base.get("name"), base.get("source")
    if not isinstance(name, str) or not name or source not in BASE_SOURCES:
        raise PayloadError(f"base needs a name and a source in {BASE_SOURCES}, got {base!r}")
    if Path(name).is_absolute():
        raise PayloadError(f"base name {name!r} is a local path; record the folder's name")
    out_dir = Path(out_dir)
    meta = read_metadata(out_dir)
    meta["base_model"] = dict(base)
    if task is not None:
        meta["task"] = dict(task)
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    _set_base_name(out_dir, lambda _old: name)


def read_metadata(adapter_dir: Path) -> dict[str, Any]:
    """Parse ``securefed_method.json``.

    Raises
    ------
    PayloadError
        If the file is missing, unreadable, or lacks a required key.
    """
    path = Path(adapter_dir) / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PayloadError(f"cannot read export metadata {path}: {err}") from err
    for key in ("method", "params", "format"):
        if key not in meta:
            raise PayloadError(f"export metadata {path} lacks {key!r}")
    return dict(meta)


def _load_peft(
    base_model: PreTrainedModel, arch: Architecture, adapter_dir: Path, meta: Mapping[str, Any]
) -> nn.Module:
    return PeftModel.from_pretrained(base_model, str(adapter_dir))


def _load_safetensors(
    base_model: PreTrainedModel, arch: Architecture, adapter_dir: Path, meta: Mapping[str, Any]
) -> nn.Module:
    from securefed.methods.registry import create_method

    method = create_method(meta["method"], **meta["params"])
    model = method.apply(base_model, arch)
    method.load_payload(model, load_numpy(str(adapter_dir / SAFETENSORS_WEIGHTS)))
    return model


Loader = Callable[[PreTrainedModel, Architecture, Path, Mapping[str, Any]], nn.Module]

#: How each export format is loaded back.
LOADERS: dict[str, Loader] = {PEFT_FORMAT: _load_peft, SAFETENSORS_FORMAT: _load_safetensors}


def load_exported(base_model: PreTrainedModel, arch: Architecture, adapter_dir: Path) -> nn.Module:
    """Rebuild the tuned model from an export directory, on an unmodified ``base_model``.

    Returns the model in eval mode. ``base_model`` is modified in place (adapters attached).

    Raises
    ------
    PayloadError
        If the export is missing, of an unknown format, or its tensors do not fit.
    """
    adapter_dir = Path(adapter_dir)
    meta = read_metadata(adapter_dir)
    loader = LOADERS.get(meta["format"])
    if loader is None:
        raise PayloadError(
            f"unknown export format {meta['format']!r}; known: {', '.join(sorted(LOADERS))}"
        )
    model = loader(base_model, arch, adapter_dir, meta)
    return model.eval()
