"""Per-process model and data state shared by the ClientApp and central evaluation.

A client process (a Ray actor in simulation, a SuperNode's ClientApp process in a
deployment) loads the backbone and applies the tuning method **once**; every later
message only swaps the trainable tensors via ``method.load_payload``. Because every
method's initial trainables are deterministic given the experiment seed, all clients
and the server build the same starting adapter.

Torch lives here and in :mod:`securefed.training`; strategies never import it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from securefed.config import DataConfig, ExperimentConfig, MethodConfig, ModelConfig
from securefed.data import (
    ClassificationData,
    EncodedSplit,
    PartitionSpec,
    encode_split,
    label_histograms,
    load_dataset,
    partition_indices,
)
from securefed.methods import TuningMethod, create_method, densify
from securefed.models import Backbone, build_classifier, load_preprocessor, resolve_backbone

__all__ = ["ClientData", "TunedModel", "build_method", "client_data", "dataset_for",
           "tuned_model"]


@dataclass
class TunedModel:
    """A classifier with a tuning method applied, plus what produced it."""

    backbone: Backbone
    method: TuningMethod
    model: torch.nn.Module
    preprocessor: Any
    num_labels: int
    #: The method's deterministic initial payload, captured right after ``apply``; the
    #: model is shared per process and later holds whatever was loaded last.
    initial: dict[str, np.ndarray]

    def payload(self) -> dict[str, np.ndarray]:
        """The trainable tensors as the method sends them."""
        return self.method.payload(self.model)

    def load(self, payload: dict[str, np.ndarray]) -> None:
        """Load a global payload (strict: keys, shapes, finite values)."""
        self.method.load_payload(self.model, payload)


def partition_spec(data: DataConfig, seed: int) -> PartitionSpec:
    """The partitioning a ``[data]`` table asks for."""
    return PartitionSpec(
        scheme=data.partitioner,
        num_partitions=data.num_clients,
        alpha=data.alpha,
        shards_per_partition=data.shards_per_client,
        min_partition_size=data.min_partition_size,
        seed=seed,
    )


def dataset_for(data: DataConfig, seed: int) -> ClassificationData:
    """Load (cached per process) the dataset a ``[data]`` table names."""
    return load_dataset(
        data.dataset,
        seed=seed,
        test_fraction=data.test_fraction,
        max_train=data.max_train or None,
        max_test=data.max_test or None,
    )


def build_method(config: ExperimentConfig) -> TuningMethod:
    """The tuning method of ``config``, in the payload form ``[federation]`` asks for.

    ``payload_form = "dense"`` wraps a factorised method (LoRA, FeDeRA) so that clients
    send the exact dense update ``B·A`` (:func:`securefed.methods.densify`).
    """
    method = create_method(config.method.name, **dict(config.method.params))
    return densify(method) if config.federation.payload_form == "dense" else method


@functools.lru_cache(maxsize=4)
def _tuned(model_cfg: ModelConfig, method_key: str, num_labels: int, seed: int,
           payload_form: str) -> TunedModel:
    method_cfg = json.loads(method_key)
    method = create_method(method_cfg.pop("name"), **method_cfg)
    if payload_form == "dense":
        method = densify(method)
    backbone = resolve_backbone(model_cfg.backbone)
    base = build_classifier(backbone, num_labels, seed=seed)
    model = method.apply(base, backbone.architecture, seed=seed)
    return TunedModel(backbone, method, model, load_preprocessor(backbone), num_labels,
                      method.payload(model))


def method_key(method: MethodConfig) -> str:
    """A hashable, canonical form of a ``[method]`` table."""
    return json.dumps({"name": method.name, **dict(method.params)}, sort_keys=True)


def tuned_model(config: ExperimentConfig) -> TunedModel:
    """The tuned model for ``config`` (built once per process and reused)."""
    data = dataset_for(config.data, config.experiment.seed)
    return _tuned(config.model, method_key(config.method), len(data.label_names),
                  config.experiment.seed, config.federation.payload_form)


@dataclass
class ClientData:
    """One client's encoded local train and validation splits."""

    partition_id: int
    train: EncodedSplit
    val: EncodedSplit

    def train_batches(self, batch_size: int, *, epoch: int, seed: int) -> Iterator[dict]:
        """Shuffled training batches; the order depends on (seed, client, epoch)."""
        gen = torch.Generator().manual_seed(
            (seed * 1_000_003 + self.partition_id * 7919 + epoch) % (2**63)
        )
        return self.train.batches(batch_size, shuffle=True, generator=gen)


def config_key(config: ExperimentConfig) -> str:
    """A hashable, canonical form of a whole config (for per-process caches)."""
    return json.dumps(config.to_dict(), sort_keys=True)


@functools.lru_cache(maxsize=64)
def _client_data(key: str, partition_id: int) -> ClientData:
    config = ExperimentConfig.from_dict(json.loads(key))
    seed = config.experiment.seed
    data = dataset_for(config.data, seed)
    parts = partition_indices(data.train, partition_spec(config.data, seed))
    if not 0 <= partition_id < len(parts):
        raise ValueError(f"partition-id {partition_id} outside [0, {len(parts)})")
    idx = np.asarray(parts[partition_id])
    rng = np.random.default_rng([seed, partition_id])
    idx = rng.permutation(idx)
    n_val = round(len(idx) * config.data.val_fraction) if len(idx) > 1 else 0
    tm = tuned_model(config)
    enc = functools.partial(encode_split, data, "train", tm.preprocessor,
                            max_length=config.model.max_length,
                            image_size=config.model.image_size)
    return ClientData(partition_id, enc(indices=idx[n_val:]), enc(indices=idx[:n_val]))


def client_data(config: ExperimentConfig, partition_id: int) -> ClientData:
    """The encoded local data of ``partition_id`` (cached per process)."""
    return _client_data(config_key(config), partition_id)


def heldout_split(config: ExperimentConfig) -> EncodedSplit:
    """The encoded global held-out test split (central evaluation; cached)."""
    return _heldout_split(config_key(config))


@functools.lru_cache(maxsize=4)
def _heldout_split(key: str) -> EncodedSplit:
    config = ExperimentConfig.from_dict(json.loads(key))
    data = dataset_for(config.data, config.experiment.seed)
    tm = tuned_model(config)
    return encode_split(data, "test", tm.preprocessor, max_length=config.model.max_length,
                        image_size=config.model.image_size)


def histograms(config: ExperimentConfig) -> dict[str, Any]:
    """Per-client label histograms of the partitioning (saved with the run)."""
    seed = config.experiment.seed
    data = dataset_for(config.data, seed)
    parts = partition_indices(data.train, partition_spec(config.data, seed))
    labels = np.asarray(data.train["label"])
    hist = label_histograms(labels, parts, len(data.label_names))
    return {
        "label_names": list(data.label_names),
        "clients": {str(i): [int(c) for c in row] for i, row in enumerate(hist)},
        "test": np.bincount(np.asarray(data.test["label"]),
                            minlength=len(data.label_names)).tolist(),
    }


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as pretty JSON, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
