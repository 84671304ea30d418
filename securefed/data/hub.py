"""Hugging Face Hub datasets, for users who are online.

A name is a hub name if it is one of :data:`HUB_ALIASES` (``glue/sst2``, ``ag_news``,
``imdb``, ``mnist``, ``cifar10``, …) or contains ``/`` (a repo id, optionally
``repo:config``). The hub is never contacted when ``HF_HUB_OFFLINE`` or
``HF_DATASETS_OFFLINE`` is set; then, and on any download failure, an
:class:`~securefed.exceptions.OfflineError` lists the packaged datasets that do work
offline. The project's own tests, demo and benchmarks use only packaged datasets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.data.base import Modality, RawSource
from securefed.exceptions import ConfigError, OfflineError
from securefed.hub import hub_disabled, hub_reachable

__all__ = ["HUB_ALIASES", "HubId", "hub_offline", "is_hub_name", "load_hub", "resolve_hub_id"]

_TEXT_COLUMNS = ("text", "sentence", "content", "review", "document")
_IMAGE_COLUMNS = ("image", "img")
_LABEL_COLUMNS = ("label", "labels", "coarse_label", "target")
_TEST_SPLITS = ("test", "validation")
@dataclass(frozen=True)
class HubId:
    """Arguments for :func:`datasets.load_dataset`: repo ``path`` and optional ``config``."""

    path: str
    config: str | None = None


HUB_ALIASES: dict[str, HubId] = {
    "glue/sst2": HubId("nyu-mll/glue", "sst2"),
    "sst2": HubId("stanfordnlp/sst2"),
    "ag_news": HubId("fancyzhx/ag_news"),
    "imdb": HubId("stanfordnlp/imdb"),
    "20newsgroups": HubId("SetFit/20_newsgroups"),
    "mnist": HubId("ylecun/mnist"),
    "cifar10": HubId("uoft-cs/cifar10"),
    "cifar100": HubId("uoft-cs/cifar100"),
}
"""Short names users may give for well-known hub datasets."""


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set to a true value."""
    return hub_disabled(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def is_hub_name(name: str) -> bool:
    """Whether ``name`` refers to the hub (a known alias or a repo id with ``/``)."""
    return name in HUB_ALIASES or "/" in name


def resolve_hub_id(name: str) -> HubId:
    """Turn an alias, ``repo`` or ``repo:config`` into a :class:`HubId`."""
    if name in HUB_ALIASES:
        return HUB_ALIASES[name]
    path, _, config = name.partition(":")
    return HubId(path, config or None)


def _first(columns: Iterable[str], candidates: Sequence[str]) -> str | None:
    present = set(columns)
    return next((c for c in candidates if c in present), None)


def _to_image(img: Any) -> np.ndarray:
    arr = np.asarray(img.convert("RGB") if getattr(img, "mode", "L") != "L" else img)
    arr = arr.astype(np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _split_arrays(
    split: Any, input_col: str, label_col: str, modality: Modality, index: dict[Any, int] | None
) -> tuple[Any, Any]:
    raw = list(split[label_col])
    labels = np.asarray([index.get(v, -1) for v in raw] if index else raw, dtype=np.int64)
    if modality == "text":
        return [str(t) for t in split[input_col]], labels
    images = [_to_image(img) for img in split[input_col]]
    if len({im.shape for im in images}) > 1:
        raise ConfigError("hub images have different sizes; resize them before loading")
    return np.stack(images), labels


def load_hub(name: str, offline_names: Iterable[str]) -> RawSource:
    """Download a hub dataset with :func:`datasets.load_dataset` and read it.

    Parameters
    ----------
    name : str
        Alias, ``repo`` or ``repo:config``.
    offline_names : Iterable[str]
        Packaged dataset names, listed in the error when the hub is unreachable.

    Raises
    ------
    OfflineError
        When offline mode is set or the download fails.
    ConfigError
        When the dataset has no recognisable input/label column or train split.
    """
    offline = ", ".join(sorted(offline_names))
    if hub_offline():
        raise OfflineError(
            f"dataset {name!r} is a hub id but HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set; "
            f"offline datasets: {offline}"
        )
    if not hub_reachable():
        raise OfflineError(
            f"dataset {name!r} is a hub id but the Hugging Face hub cannot be reached from "
            f"here; offline datasets: {offline}"
        )
    hub_id = resolve_hub_id(name)
    try:
        import datasets

        dsd = datasets.load_dataset(hub_id.path, hub_id.config)
    except Exception as exc:  # any hub/network failure means: not reachable from here
        raise OfflineError(
            f"could not load hub dataset {name!r} ({type(exc).__name__}: {exc}); "
            f"offline datasets: {offline}"
        ) from exc
    if "train" not in dsd:
        raise ConfigError(f"hub dataset {name!r} has no 'train' split: {sorted(dsd)}")
    train = dsd["train"]
    columns = list(train.column_names)
    label_col = _first(columns, _LABEL_COLUMNS)
    text_col = _first(columns, _TEXT_COLUMNS)
    image_col = _first(columns, _IMAGE_COLUMNS)
    input_col = image_col or text_col
    if label_col is None or input_col is None:
        raise ConfigError(f"hub dataset {name!r}: no input/label column among {columns}")
    modality: Modality = "image" if image_col else "text"
    feature = train.features[label_col]
    index: dict[Any, int] | None = None
    if hasattr(feature, "names"):
        label_names = tuple(str(n) for n in feature.names)
    else:  # plain values: number them in sorted order
        values = sorted(set(train[label_col]))
        index = {v: i for i, v in enumerate(values)}
        label_names = tuple(str(v) for v in values)
    x, y = _split_arrays(train, input_col, label_col, modality, index)
    test = None
    for split_name in _TEST_SPLITS:
        if split_name in dsd and label_col in dsd[split_name].column_names:
            tx, ty = _split_arrays(dsd[split_name], input_col, label_col, modality, index)
            if len(ty) and (ty >= 0).all():  # GLUE test labels are -1
                test = (tx, ty)
                break
    return RawSource(
        modality=modality,
        label_names=label_names,
        inputs=x,
        labels=y,
        test=test,
    )
