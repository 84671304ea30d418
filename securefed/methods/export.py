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
"""

from __future__ import annotations

import json
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
]

EXPORT_VERSION = 1
METADATA_FILE = "securefed_method.json"
PEFT_FORMAT = "peft"
PEFT_WEIGHTS = "adapter_model.safetensors"
SAFETENSORS_FORMAT = "securefed-safetensors"
SAFETENSORS_WEIGHTS = "adapter.safetensors"


def finish_export(
    method: TuningMethod,
    out_dir: Path,
    fmt: str,
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    extra: Mapping[str, Any] | None = None,
) -> ExportInfo:
    """Write ``securefed_method.json`` for weights already in ``out_dir``; describe the export."""
    weights = PEFT_WEIGHTS if fmt == PEFT_FORMAT else SAFETENSORS_WEIGHTS
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
