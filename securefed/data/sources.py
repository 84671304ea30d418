"""Load a classification dataset by name: packaged corpora offline, hub ids online.

:func:`load_dataset` resolves a name in this order:

1. a name in :data:`~securefed.data.base.DATASETS` (packaged, works offline):
   ``bbc-news``, ``tweet-sentiment``, ``digits``, ``mnist-5k``, ``cifar10-samples``,
   ``fashion-mnist``;
2. a hub name (an alias in :data:`~securefed.data.hub.HUB_ALIASES` or an id with
   ``/``), fetched with :func:`datasets.load_dataset` — an
   :class:`~securefed.exceptions.OfflineError` when offline;
3. anything else is an :class:`~securefed.exceptions.UnknownNameError` listing both.

Sources without their own test split get a deterministic stratified split
(:func:`~securefed.data.splits.stratified_split`) by ``seed`` and ``test_fraction``;
``max_train`` / ``max_test`` then subsample each split, stratified. Parsed corpora and
finished results are cached in-process, because client processes call this repeatedly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from securefed.data import image_sources as _image_sources  # noqa: F401  (registers)
from securefed.data import text_sources as _text_sources  # noqa: F401  (registers)
from securefed.data.base import DATASETS, ClassificationData, RawSource, SourceLoader, build_table
from securefed.data.hub import HUB_ALIASES, is_hub_name, load_hub
from securefed.data.splits import stratified_split, stratified_subsample
from securefed.exceptions import ConfigError, UnknownNameError

__all__ = [
    "clear_dataset_cache",
    "dataset_names",
    "load_dataset",
    "register_dataset",
]


def register_dataset(name: str, loader: SourceLoader) -> None:
    """Register a packaged-dataset loader; a duplicate name is a ``RegistryError``."""
    DATASETS.register(name, loader)


def dataset_names() -> list[str]:
    """Names of the datasets that load offline, in registration order."""
    return DATASETS.names()


@functools.lru_cache(maxsize=16)
def _read_source(name: str) -> RawSource:
    if name in DATASETS:
        return DATASETS.get(name)()
    if is_hub_name(name):
        return load_hub(name, DATASETS.names())
    raise UnknownNameError("dataset", name, [*DATASETS.names(), *HUB_ALIASES])


def _take(
    inputs: Sequence[str] | npt.NDArray[np.uint8], idx: npt.NDArray[np.int64]
) -> Sequence[str] | npt.NDArray[np.uint8]:
    if isinstance(inputs, np.ndarray):
        return inputs[idx]
    return [inputs[int(i)] for i in idx]


def _cap(
    inputs: Sequence[str] | npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    limit: int | None,
    seed: int,
) -> tuple[Sequence[str] | npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    if limit is None or limit >= len(labels):
        return inputs, labels
    idx = stratified_subsample(labels, limit, seed=seed)
    return _take(inputs, idx), labels[idx]


def _unique_texts(raw: RawSource) -> RawSource:
    """Drop exact duplicate texts (first occurrence kept).

    The packaged corpora repeat some documents verbatim (BBC News: 98 of 2,225; the
    tweet corpus: 915, 46 of them with conflicting labels). Left in, a stratified split
    puts copies on both sides and the "held-out" accuracy is inflated.
    """
    if raw.modality != "text" or raw.test is not None:
        return raw
    first: dict[str, int] = {}
    for i, text in enumerate(raw.inputs):
        first.setdefault(str(text), i)
    if len(first) == len(raw.inputs):
        return raw
    keep = np.fromiter(sorted(first.values()), dtype=np.int64)
    return RawSource(raw.modality, raw.label_names, _take(raw.inputs, keep),
                     np.asarray(raw.labels, dtype=np.int64)[keep])


@functools.lru_cache(maxsize=64)
def _load(
    name: str, seed: int, test_fraction: float, max_train: int | None, max_test: int | None
) -> ClassificationData:
    raw = _unique_texts(_read_source(name))
    labels = np.asarray(raw.labels, dtype=np.int64)
    if raw.test is None:
        train_idx, test_idx = stratified_split(labels, test_fraction=test_fraction, seed=seed)
        train = (_take(raw.inputs, train_idx), labels[train_idx])
        test = (_take(raw.inputs, test_idx), labels[test_idx])
    else:
        train = (raw.inputs, labels)
        test = (raw.test[0], np.asarray(raw.test[1], dtype=np.int64))
    train = _cap(*train, max_train, seed)
    test = _cap(*test, max_test, seed)
    return ClassificationData(
        name=name,
        modality=raw.modality,
        label_names=raw.label_names,
        train=build_table(raw.modality, *train, raw.label_names),
        test=build_table(raw.modality, *test, raw.label_names),
    )


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ClassificationData:
    """Load a classification dataset with a train and a held-out test split.

    Parameters
    ----------
    name : str
        A packaged name (see :func:`dataset_names`), a hub alias or a hub id.
    seed : int, default 0
        Seed of the stratified test split and of the subsampling.
    test_fraction : float, default 0.2
        Share held out for testing, in ``(0, 1)``; ignored by sources with their own
        test split (``fashion-mnist``, most hub datasets).
    max_train, max_test : int, optional
        Cap each split at this many examples, chosen stratified and deterministically.

    Returns
    -------
    ClassificationData
        Cached: the same arguments return the same object within a process.

    Raises
    ------
    UnknownNameError
        For a plain name that is neither packaged nor a hub alias.
    OfflineError
        For a hub name while offline or when the download fails.
    AssetError
        When a packaged dataset's package or files are missing (the message names the
        install command).
    ConfigError
        For an invalid ``test_fraction``, ``max_train`` or ``max_test``.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name must be a non-empty string, got {name!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    for field, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and (isinstance(value, bool) or int(value) < 1):
            raise ConfigError(f"{field} must be a positive int or None, got {value!r}")
    return _load(
        name,
        int(seed),
        float(test_fraction),
        None if max_train is None else int(max_train),
        None if max_test is None else int(max_test),
    )


def clear_dataset_cache() -> None:
    """Forget every parsed corpus and loaded dataset (frees memory; used in tests)."""
    _read_source.cache_clear()
    _load.cache_clear()
