"""Using an exported adapter: load it on its base backbone, evaluate it, predict with it.

A run's ``adapter/`` (either export format, ``docs/methods.md``) records its base
backbone by alias, hub id or folder name, and the task it was trained for, in
``securefed_method.json`` (:func:`export_run_adapter`)::

    "base_model": {"name": "minilm-l6", "source": "alias", "model_type": "bert",
                   "modality": "text"},
    "task": {"dataset": "bbc-news", "label_names": ["business", ...],
             "max_length": 64, "image_size": 224,
             "seed": 0, "test_fraction": 0.2, "max_train": 0, "max_test": 0}

:func:`load_adapter` rebuilds the tuned classifier from that alone. An export made
before these keys existed is read with the run directory around it (``config.toml``
and ``partitions.json``); a base that was a local folder needs ``backbone=FOLDER``.
:func:`evaluate_adapter` scores it on a dataset's held-out split, drawn with the run's
seed and test fraction so it is the very split the run evaluated on; :func:`predict`
labels texts or image files.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefed.exceptions import AssetError, ConfigError, PayloadError, SecurefedError

if TYPE_CHECKING:
    from torch import nn

    from securefed.app.runtime import TunedModel
    from securefed.config import ExperimentConfig
    from securefed.methods.base import ExportInfo
    from securefed.models import Backbone

__all__ = ["IMAGE_SUFFIXES", "LoadedAdapter", "Prediction", "base_reference",
           "evaluate_adapter", "export_run_adapter", "load_adapter", "predict"]

#: File suffixes :func:`predict` reads as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm")


def base_reference(backbone: Backbone) -> dict[str, str]:
    """How an export names its base: the alias or hub id, or a local folder's name only."""
    name = Path(backbone.name).name if backbone.source == "local" else backbone.name
    return {"name": name, "source": backbone.source, "model_type": backbone.model_type,
            "modality": backbone.modality}


def export_run_adapter(config: ExperimentConfig, tm: TunedModel, out_dir: Path) -> ExportInfo:
    """Export a run's tuned model to ``out_dir`` with its base backbone and task recorded."""
    from securefed.app.runtime import dataset_for
    from securefed.methods.export import record_base

    info = tm.method.export(tm.model, out_dir)
    data = dataset_for(config.data, config.experiment.seed)
    task = {"dataset": config.data.dataset, "label_names": list(data.label_names),
            "max_length": config.model.max_length, "image_size": config.model.image_size,
            "seed": config.experiment.seed, "test_fraction": config.data.test_fraction,
            "max_train": config.data.max_train, "max_test": config.data.max_test}
    record_base(out_dir, base_reference(tm.backbone), task)
    return info


@dataclass
class LoadedAdapter:
    """A tuned classifier rebuilt from an export.

    Attributes
    ----------
    directory : Path
        The export directory.
    model : torch.nn.Module
        In eval mode.
    backbone : Backbone
        The resolved base backbone.
    preprocessor : Any
        Its tokenizer (text) or image spec (image).
    label_names : tuple of str
        Class ``i`` is ``label_names[i]``.
    task : dict
        The export's ``task`` record (dataset, encoding, split settings).
    """

    directory: Path
    model: nn.Module
    backbone: Backbone
    preprocessor: Any
    label_names: tuple[str, ...]
    task: dict[str, Any]


@dataclass(frozen=True)
class Prediction:
    """One input's most probable class."""

    input: str
    label: str
    index: int
    probability: float


def _run_file(adapter_dir: Path, name: str) -> Path | None:
    path = adapter_dir.resolve().parent / name
    return path if path.is_file() else None


def _legacy_task(adapter_dir: Path) -> dict[str, Any]:
    """The task of an export without a ``task`` record, from the run directory around it."""
    config_path = _run_file(adapter_dir, "config.toml")
    parts_path = _run_file(adapter_dir, "partitions.json")
    if config_path is None or parts_path is None:
        raise PayloadError(
            f"{adapter_dir} records no task (label names, dataset) and is not inside a run "
            "directory (config.toml, partitions.json beside it); re-export it with this "
            "version of securefed")
    tree = tomllib.loads(config_path.read_text(encoding="utf-8"))
    data, model = tree.get("data", {}), tree.get("model", {})
    return {"dataset": data.get("dataset"),
            "label_names": json.loads(parts_path.read_text())["label_names"],
            "max_length": model.get("max_length", 128), "image_size": model.get("image_size", 224),
            "seed": tree.get("experiment", {}).get("seed", 0),
            "test_fraction": data.get("test_fraction", 0.2),
            "max_train": data.get("max_train", 0), "max_test": data.get("max_test", 0)}


def _base_name(adapter_dir: Path, meta: Mapping[str, Any], backbone: str | None) -> str:
    """What to resolve as the base: ``backbone``, the recorded alias or hub id, or the
    backbone of the run directory around the export."""
    if backbone:
        return backbone
    base = meta.get("base_model")
    if isinstance(base, Mapping) and base.get("source") in ("alias", "hub"):
        return str(base["name"])
    config_path = _run_file(adapter_dir, "config.toml")
    if config_path is not None:
        name = tomllib.loads(config_path.read_text(encoding="utf-8")).get(
            "model", {}).get("backbone")
        if isinstance(name, str) and name:
            return name
    what = (f"a local backbone folder named {base['name']!r}" if isinstance(base, Mapping)
            else "an unrecorded backbone")
    raise ConfigError(f"{adapter_dir} was trained on {what}; pass --backbone FOLDER "
                      "(or an alias: see `securefed backbones`)")


def load_adapter(adapter_dir: Path, *, backbone: str | None = None) -> LoadedAdapter:
    """Rebuild the tuned classifier exported to ``adapter_dir``.

    Parameters
    ----------
    adapter_dir : Path
        An export directory (``securefed_method.json`` and the weights).
    backbone : str, optional
        The base backbone (alias, folder or hub id); default: the one the export records.

    Raises
    ------
    AssetError
        If ``adapter_dir`` is missing or not an export.
    PayloadError
        If the export is unreadable or its tensors do not fit the backbone.
    ConfigError
        If the base backbone cannot be determined, or its modality is not the export's.
    """
    from securefed.methods.export import METADATA_FILE, load_exported, read_metadata
    from securefed.models import build_classifier, load_preprocessor, resolve_backbone

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AssetError(f"adapter directory {adapter_dir} does not exist")
    if not (adapter_dir / METADATA_FILE).is_file():
        raise AssetError(f"{adapter_dir} is not an exported adapter: it has no {METADATA_FILE} "
                         "(a run writes its adapter to RUN_DIR/adapter)")
    meta = read_metadata(adapter_dir)
    task = dict(meta["task"]) if isinstance(meta.get("task"), Mapping) else _legacy_task(
        adapter_dir)
    labels = tuple(str(n) for n in task["label_names"])
    resolved = resolve_backbone(_base_name(adapter_dir, meta, backbone))
    recorded = meta.get("base_model", {}).get("modality")
    if recorded and recorded != resolved.modality:
        raise ConfigError(f"{adapter_dir} was trained on a {recorded} backbone, but "
                          f"{resolved.name!r} is a {resolved.modality} backbone")
    base = build_classifier(resolved, len(labels), seed=int(task.get("seed", 0)),
                            id2label=dict(enumerate(labels)))
    try:
        model = load_exported(base, resolved.architecture, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as exc:
        if isinstance(exc, SecurefedError):
            raise
        raise PayloadError(f"{adapter_dir} does not fit backbone {resolved.name!r} with "
                           f"{len(labels)} labels: {exc}") from exc
    return LoadedAdapter(adapter_dir, model, resolved, load_preprocessor(resolved), labels, task)


def evaluate_adapter(adapter: LoadedAdapter, dataset: str | None = None, *,
                     split: str = "test", seed: int | None = None,
                     test_fraction: float | None = None,
                     batch_size: int = 64) -> dict[str, Any]:
    """Accuracy and loss of ``adapter`` on a dataset's split.

    The split is drawn as the run drew it: with the export's seed, test fraction and
    caps, unless ``seed`` / ``test_fraction`` override them.

    Raises
    ------
    ConfigError
        If the dataset's modality or number of classes differs from the adapter's.
    """
    from securefed.data import encode_split, load_dataset
    from securefed.training import evaluate

    task = adapter.task
    name = dataset or task.get("dataset")
    if not name:
        raise ConfigError("no dataset recorded with the adapter; pass --data NAME")
    if split not in ("test", "train"):
        raise ConfigError(f"unknown split {split!r}; valid: test, train")
    seed = int(task.get("seed", 0)) if seed is None else seed
    fraction = float(task.get("test_fraction", 0.2)) if test_fraction is None else test_fraction
    data = load_dataset(str(name), seed=seed, test_fraction=fraction,
                        max_train=int(task.get("max_train") or 0) or None,
                        max_test=int(task.get("max_test") or 0) or None)
    if data.modality != adapter.backbone.modality:
        raise ConfigError(f"dataset {name!r} is {data.modality}, but the adapter's backbone "
                          f"{adapter.backbone.name!r} takes {adapter.backbone.modality}")
    if data.num_classes != len(adapter.label_names):
        raise ConfigError(
            f"dataset {name!r} has {data.num_classes} classes, but the adapter was trained "
            f"for {len(adapter.label_names)} ({', '.join(adapter.label_names)})")
    encoded = encode_split(data, "test" if split == "test" else "train", adapter.preprocessor,
                           max_length=int(task.get("max_length", 128)),
                           image_size=int(task.get("image_size", 224)))
    result = evaluate(adapter.model, encoded.batches(batch_size, shuffle=False))
    return {"adapter": str(adapter.directory), "dataset": str(name), "split": split,
            "seed": seed, "test_fraction": fraction, "examples": result.num_examples,
            "accuracy": result.accuracy, "loss": result.loss,
            "label_names_match": list(data.label_names) == list(adapter.label_names)}


def _read_image(path: Path) -> Any:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"cannot read image {path}: {exc}") from exc


def _encode_inputs(adapter: LoadedAdapter, inputs: Sequence[str]) -> dict[str, Any]:
    import numpy as np

    from securefed.data import encode_images, encode_text

    if adapter.backbone.modality == "text":
        for item in inputs:
            if Path(item).suffix.lower() in IMAGE_SUFFIXES and Path(item).is_file():
                raise ConfigError(f"{item} is an image file, but the adapter's backbone "
                                  f"{adapter.backbone.name!r} takes text")
        return encode_text(list(inputs), adapter.preprocessor,
                           max_length=int(adapter.task.get("max_length", 128)))
    size = int(adapter.task.get("image_size", 224))
    pixels = []
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise ConfigError(f"no such image file: {item} (the adapter's backbone "
                              f"{adapter.backbone.name!r} takes images)")
        pixels.append(encode_images(_read_image(path)[np.newaxis], adapter.preprocessor,
                                    size=size))
    import torch

    return {"pixel_values": torch.cat(pixels)}


def predict(adapter: LoadedAdapter, inputs: Sequence[str]) -> list[Prediction]:
    """The most probable label, and its softmax probability, of each input.

    ``inputs`` are texts for a text backbone, image file paths for an image backbone.

    Raises
    ------
    ConfigError
        If there are no inputs, an image file is missing or unreadable, or an input's
        modality is not the backbone's.
    """
    import torch

    if not inputs:
        raise ConfigError("give at least one input (a text, or an image file)")
    encoded = _encode_inputs(adapter, inputs)
    adapter.model.eval()
    with torch.no_grad():
        probs = torch.softmax(adapter.model(**encoded).logits.float(), dim=-1)
    out = []
    for item, row in zip(inputs, probs, strict=True):
        index = int(row.argmax())
        prob = float(row[index])
        if not math.isfinite(prob):
            raise PayloadError(f"the adapter gave a non-finite probability for {item!r}")
        out.append(Prediction(item, adapter.label_names[index], index, prob))
    return out
