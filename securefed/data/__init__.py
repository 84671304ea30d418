"""Datasets, federated partitioning and tokenisation/pixel encoding.

* :func:`load_dataset` — packaged corpora offline (``bbc-news``, ``tweet-sentiment``,
  ``digits``, ``mnist-5k``, ``cifar10-samples``, ``fashion-mnist``) and hub ids online,
  as a :class:`ClassificationData` with a stratified held-out test split.
* :func:`partition_indices` — split a training set over clients (``iid``, ``dirichlet``,
  ``shards``) with flwr-datasets partitioners, configured by :class:`PartitionSpec`.
* :func:`encode_split` — token ids or normalised pixels as an :class:`EncodedSplit`.
"""

from securefed.data.base import (
    DATASETS,
    ClassificationData,
    Modality,
    RawSource,
    SourceLoader,
    image_array,
    label_array,
    text_list,
)
from securefed.data.hub import HUB_ALIASES, HubId, hub_offline, is_hub_name
from securefed.data.image_sources import read_idx
from securefed.data.partition import (
    PARTITIONERS,
    PartitionSpec,
    histograms_to_json,
    label_histograms,
    partition_indices,
    partition_labels,
)
from securefed.data.preprocess import (
    ENCODERS,
    EncodedSplit,
    NormalizationSpec,
    Tokenizer,
    encode_images,
    encode_split,
    encode_text,
)
from securefed.data.sources import (
    clear_dataset_cache,
    dataset_names,
    load_dataset,
    register_dataset,
)
from securefed.data.splits import stratified_split, stratified_subsample

__all__ = [
    "DATASETS",
    "ENCODERS",
    "HUB_ALIASES",
    "PARTITIONERS",
    "ClassificationData",
    "EncodedSplit",
    "HubId",
    "Modality",
    "NormalizationSpec",
    "PartitionSpec",
    "RawSource",
    "SourceLoader",
    "Tokenizer",
    "clear_dataset_cache",
    "dataset_names",
    "encode_images",
    "encode_split",
    "encode_text",
    "histograms_to_json",
    "hub_offline",
    "image_array",
    "is_hub_name",
    "label_array",
    "label_histograms",
    "load_dataset",
    "partition_indices",
    "partition_labels",
    "read_idx",
    "register_dataset",
    "stratified_split",
    "stratified_subsample",
    "text_list",
]
