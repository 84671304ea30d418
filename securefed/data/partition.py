"""Split a training set over federated clients with flwr-datasets partitioners.

Three schemes live in :data:`PARTITIONERS`:

* ``iid`` — :class:`flwr_datasets.partitioner.IidPartitioner`: equal contiguous blocks
  of a seeded permutation of the rows; every index is used.
* ``dirichlet`` — :class:`~flwr_datasets.partitioner.DirichletPartitioner`: each class is
  spread over clients by proportions drawn from ``Dir(alpha)`` (Hsu et al. 2019,
  arXiv:1909.06335). Small ``alpha`` means skewed label mixes. Every index is used.
* ``shards`` — :class:`~flwr_datasets.partitioner.ShardPartitioner`: sort by label, cut
  into equal shards, deal ``shards_per_partition`` to each client (McMahan et al. 2017,
  arXiv:1602.05629). The last incomplete shard is dropped, so a few indices may be
  unused.

Partitioners only see a two-column table (``label``, ``_row``); they return row ids, not
data, so the result depends only on the labels and the :class:`PartitionSpec`, which is
also the in-process cache key.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np
import numpy.typing as npt
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    ShardPartitioner,
)

from securefed.data.base import label_array
from securefed.exceptions import ConfigError
from securefed.registry import Registry

__all__ = [
    "PARTITIONERS",
    "PartitionSpec",
    "histograms_to_json",
    "label_histograms",
    "partition_indices",
    "partition_labels",
]

_ROW = "_row"

PartitionerFactory = Callable[["PartitionSpec"], Partitioner]
"""Builds a fresh flwr-datasets partitioner (``partition_by="label"``) from a spec."""


def _iid(spec: PartitionSpec) -> Partitioner:
    return IidPartitioner(num_partitions=spec.num_partitions)


def _dirichlet(spec: PartitionSpec) -> Partitioner:
    return DirichletPartitioner(
        num_partitions=spec.num_partitions,
        partition_by="label",
        alpha=float(spec.alpha),
        min_partition_size=spec.min_partition_size,
        self_balancing=False,
        shuffle=True,
        seed=spec.seed,
    )


def _shards(spec: PartitionSpec) -> Partitioner:
    return ShardPartitioner(
        num_partitions=spec.num_partitions,
        partition_by="label",
        num_shards_per_partition=spec.shards_per_partition,
        shuffle=True,
        seed=spec.seed,
    )


PARTITIONERS: Registry[PartitionerFactory] = Registry("partition scheme")
PARTITIONERS.register("iid", _iid)
PARTITIONERS.register("dirichlet", _dirichlet)
PARTITIONERS.register("shards", _shards)


@dataclass(frozen=True)
class PartitionSpec:
    """How to split a training set over clients.

    Attributes
    ----------
    scheme : str, default "dirichlet"
        A name in :data:`PARTITIONERS`: ``iid``, ``dirichlet`` or ``shards``.
    num_partitions : int, default 10
        Number of clients, at least 1.
    alpha : float, default 0.5
        Dirichlet concentration (``dirichlet`` only), > 0; smaller is more skewed.
    shards_per_partition : int, default 2
        Label-sorted shards per client (``shards`` only), at least 1.
    min_partition_size : int, default 2
        Redraw Dirichlet proportions until every client has this many examples (up to
        10 tries), at least 0.
    seed : int, default 0
        Seed; the same labels and spec always give the same partition.
    """

    scheme: str = "dirichlet"
    num_partitions: int = 10
    alpha: float = 0.5
    shards_per_partition: int = 2
    min_partition_size: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        PARTITIONERS.get(self.scheme)  # UnknownNameError listing the schemes
        checks = (
            ("num_partitions", self.num_partitions, 1),
            ("shards_per_partition", self.shards_per_partition, 1),
            ("min_partition_size", self.min_partition_size, 0),
        )
        for field, value, low in checks:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ConfigError(f"{field} must be an int >= {low}, got {value!r}")
        if not np.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"alpha must be a finite float > 0, got {self.alpha!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")


_CACHE: dict[tuple[str, int, PartitionSpec], tuple[npt.NDArray[np.int64], ...]] = {}
_CACHE_LIMIT = 64


def _labels_key(labels: npt.NDArray[np.int64]) -> str:
    return hashlib.sha1(np.ascontiguousarray(labels).tobytes(), usedforsecurity=False).hexdigest()


def _compute(
    labels: npt.NDArray[np.int64], spec: PartitionSpec
) -> tuple[npt.NDArray[np.int64], ...]:
    n = len(labels)
    if spec.num_partitions > n:
        raise ConfigError(
            f"num_partitions must be <= the number of examples ({n}), got {spec.num_partitions}"
        )
    # IidPartitioner cuts contiguous blocks, so rows are permuted by the seed first (for
    # every scheme: the others shuffle within classes anyway).
    rows = np.random.default_rng(spec.seed).permutation(n).astype(np.int64)
    table = datasets.Dataset.from_dict({"label": labels[rows], _ROW: rows})
    partitioner = PARTITIONERS.get(spec.scheme)(spec)
    partitioner.dataset = table
    parts = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Dirichlet redraw chatter
            warnings.simplefilter("ignore", FutureWarning)  # pyarrow sort options (shards)
            for i in range(spec.num_partitions):
                part = partitioner.load_partition(i)
                parts.append(np.asarray(part[:][_ROW], dtype=np.int64))
    except ValueError as exc:  # flwr-datasets reports impossible configs as ValueError
        raise ConfigError(f"cannot partition {n} examples with {spec}: {exc}") from exc
    for p in parts:
        p.setflags(write=False)
    return tuple(parts)


def partition_labels(labels: npt.ArrayLike, spec: PartitionSpec) -> list[npt.NDArray[np.int64]]:
    """Partition examples given only their labels; see :func:`partition_indices`."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    key = (_labels_key(y), len(y), spec)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _compute(y, spec)
    return list(_CACHE[key])


def partition_indices(train: datasets.Dataset, spec: PartitionSpec) -> list[npt.NDArray[np.int64]]:
    """Split the rows of ``train`` over ``spec.num_partitions`` clients.

    Parameters
    ----------
    train : datasets.Dataset
        Table with an integer ``label`` column.
    spec : PartitionSpec
        Scheme and its parameters.

    Returns
    -------
    list of numpy.ndarray
        One read-only ``int64`` index array into ``train`` per client. No index appears
        twice; ``iid`` and ``dirichlet`` use every index. Cached in-process by the labels'
        hash and ``spec``.

    Raises
    ------
    ConfigError
        If the data cannot be split that way (more clients than examples, Dirichlet
        minimum size not reachable, too few shards).
    """
    return partition_labels(label_array(train), spec)


def label_histograms(
    labels: npt.ArrayLike, parts: Sequence[npt.ArrayLike], num_classes: int
) -> npt.NDArray[np.int64]:
    """Count each client's labels.

    Returns
    -------
    numpy.ndarray
        ``int64`` array ``[num_partitions, num_classes]``; row ``i`` counts the labels
        of ``labels[parts[i]]``.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    out = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, part in enumerate(parts):
        out[i] = np.bincount(y[np.asarray(part, dtype=np.int64)], minlength=num_classes)[
            :num_classes
        ]
    return out


def histograms_to_json(
    histograms: npt.ArrayLike,
    *,
    spec: PartitionSpec | None = None,
    label_names: Sequence[str] | None = None,
) -> str:
    """Serialise label histograms (and the spec that made them) as JSON for a run dir."""
    hist = np.asarray(histograms, dtype=np.int64)
    doc: dict[str, Any] = {
        "num_partitions": int(hist.shape[0]),
        "num_classes": int(hist.shape[1]) if hist.ndim == 2 else 0,
        "sizes": hist.sum(axis=1).tolist() if hist.ndim == 2 else [],
        "histograms": hist.tolist(),
    }
    if spec is not None:
        doc["spec"] = asdict(spec)
    if label_names is not None:
        doc["label_names"] = list(label_names)
    return json.dumps(doc, indent=2, sort_keys=True)
