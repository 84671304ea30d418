"""Turn a dataset split into model inputs: token ids for text, pixel tensors for images.

:func:`encode_split` picks the encoder by the data's modality from :data:`ENCODERS`
(``text`` → :func:`encode_text`, ``image`` → :func:`encode_images`) and returns an
:class:`EncodedSplit`, which batches the tensors for a training loop. Keys follow the
Hugging Face convention: ``input_ids``, ``attention_mask``, ``token_type_ids``,
``pixel_values`` and ``labels``.

``torch`` is imported on first use only, so the server side can import
:mod:`securefed.data` (e.g. for partition histograms) without it. Images are encoded
eagerly: 224×224 float32 pixels cost 0.6 MB each, so encode a
client's partition (``indices=``), not a whole large split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import datasets
import numpy as np
import numpy.typing as npt

from securefed.data.base import ClassificationData, image_array, label_array, text_list
from securefed.exceptions import ConfigError, UnknownNameError
from securefed.registry import Registry

if TYPE_CHECKING:  # torch is imported lazily so `import securefed.data` stays torch-free
    import torch

__all__ = [
    "ENCODERS",
    "EncodedSplit",
    "NormalizationSpec",
    "Tokenizer",
    "encode_images",
    "encode_split",
    "encode_text",
]

_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
_CHUNK = 256


class NormalizationSpec(Protocol):
    """Anything with per-channel ``mean`` and ``std`` (e.g. the models' ``ImageSpec``)."""

    @property
    def mean(self) -> tuple[float, ...]: ...

    @property
    def std(self) -> tuple[float, ...]: ...


class Tokenizer(Protocol):
    """A Hugging Face-style tokenizer: called on a batch of strings."""

    def __call__(self, text: list[str], **kwargs: Any) -> Mapping[str, Any]: ...


def encode_text(
    texts: Sequence[str], tokenizer: Tokenizer, *, max_length: int
) -> dict[str, torch.Tensor]:
    """Tokenise, truncate and pad every text to ``max_length``.

    Returns
    -------
    dict[str, torch.Tensor]
        ``input_ids`` and ``attention_mask`` (``int64`` ``[N, max_length]``), plus
        ``token_type_ids`` when the tokenizer returns them.
    """
    import torch

    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    if len(texts) == 0:
        empty = torch.zeros((0, max_length), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone()}
    enc = tokenizer(
        [str(t) for t in texts],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {k: torch.as_tensor(enc[k], dtype=torch.long) for k in _TEXT_KEYS if k in enc}


def encode_images(
    images: npt.ArrayLike | torch.Tensor, spec: NormalizationSpec, *, size: int
) -> torch.Tensor:
    """Convert ``uint8`` images ``[N, H, W, C]`` to normalised ``pixel_values``.

    Grayscale (``C == 1``) is repeated to 3 channels, the image is resized to
    ``size × size`` with bilinear interpolation (antialiased when shrinking), scaled to
    ``[0, 1]`` and normalised per channel by ``spec.mean`` / ``spec.std``.

    Returns
    -------
    torch.Tensor
        ``float32`` ``[N, 3, size, size]``.
    """
    import torch
    import torch.nn.functional as F

    if size < 1:
        raise ConfigError(f"size must be >= 1, got {size}")
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ConfigError(f"images must be [N, H, W, C] with C in (1, 3), got {tuple(x.shape)}")
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    if mean.numel() != 3 or std.numel() != 3 or bool((std <= 0).any()):
        raise ConfigError(f"spec needs 3 means and 3 positive stds, got {spec.mean}/{spec.std}")
    out = torch.empty((x.shape[0], 3, size, size), dtype=torch.float32)
    shrink = x.shape[1] > size or x.shape[2] > size
    for start in range(0, x.shape[0], _CHUNK):
        chunk = x[start : start + _CHUNK].permute(0, 3, 1, 2).to(torch.float32) / 255.0
        chunk = chunk.expand(-1, 3, -1, -1) if chunk.shape[1] == 1 else chunk
        if tuple(chunk.shape[-2:]) != (size, size):
            chunk = F.interpolate(
                chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
            )
        out[start : start + _CHUNK] = (chunk - mean) / std
    return out


@dataclass(frozen=True)
class EncodedSplit:
    """Model inputs and labels of one split, ready for batching.

    Attributes
    ----------
    inputs : dict[str, torch.Tensor]
        Tensors whose first dimension indexes examples.
    labels : torch.Tensor
        ``int64`` ``[N]``.
    """

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.labels)
        bad = {k: tuple(v.shape) for k, v in self.inputs.items() if v.shape[0] != n}
        if bad:
            raise ConfigError(f"inputs {bad} do not match {n} labels")
        if "labels" in self.inputs:
            raise ConfigError("'labels' is reserved; pass labels separately")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: npt.ArrayLike | torch.Tensor) -> EncodedSplit:
        """The examples at ``indices`` (in that order)."""
        import torch

        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        return EncodedSplit({k: v[idx] for k, v in self.inputs.items()}, self.labels[idx])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield dicts of input tensors plus ``labels``, ``batch_size`` rows each.

        Parameters
        ----------
        batch_size : int
            Rows per batch, >= 1; the last batch may be smaller unless ``drop_last``.
        shuffle : bool, default False
            Visit rows in a random order drawn from ``generator``.
        generator : torch.Generator, optional
            Source of the shuffle order (pass a seeded one for reproducible runs).
        drop_last : bool, default False
            Skip a final incomplete batch.
        """
        import torch

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v[idx] for k, v in self.inputs.items()}
            batch["labels"] = self.labels[idx]
            yield batch


Encoder = Callable[
    [datasets.Dataset, npt.NDArray[np.int64], Any, int, int], dict[str, "torch.Tensor"]
]
"""``(table, indices, preprocessor, max_length, image_size) -> inputs``."""


def _encode_text_table(
    ds: datasets.Dataset, idx: npt.NDArray[np.int64], tokenizer: Any, max_length: int, _: int
) -> dict[str, torch.Tensor]:
    texts = text_list(ds)
    return encode_text([texts[i] for i in idx], tokenizer, max_length=max_length)


def _encode_image_table(
    ds: datasets.Dataset, idx: npt.NDArray[np.int64], spec: Any, _: int, image_size: int
) -> dict[str, torch.Tensor]:
    return {"pixel_values": encode_images(image_array(ds)[idx], spec, size=image_size)}


ENCODERS: Registry[Encoder] = Registry("modality encoder")
ENCODERS.register("text", _encode_text_table)
ENCODERS.register("image", _encode_image_table)

_SPLITS = ("train", "test")


def encode_split(
    data: ClassificationData,
    split: Literal["train", "test"],
    preprocessor: Tokenizer | NormalizationSpec,
    *,
    max_length: int = 128,
    image_size: int = 224,
    indices: npt.ArrayLike | None = None,
) -> EncodedSplit:
    """Encode one split of ``data`` (optionally only the rows at ``indices``).

    Parameters
    ----------
    data : ClassificationData
        Loaded dataset.
    split : {"train", "test"}
        Which table to encode.
    preprocessor : Tokenizer or NormalizationSpec
        A tokenizer for text data, an object with ``mean``/``std`` for images.
    max_length : int, default 128
        Token length (text only).
    image_size : int, default 224
        Output side length (images only).
    indices : array_like of int, optional
        Rows to encode, e.g. one client's partition; default all rows.
    """
    if split not in _SPLITS:
        raise UnknownNameError("split", str(split), _SPLITS)
    ds: datasets.Dataset = getattr(data, split)
    encoder = ENCODERS.get(data.modality)
    labels = label_array(ds)
    idx = (
        np.arange(len(labels), dtype=np.int64)
        if indices is None
        else np.asarray(indices, dtype=np.int64).reshape(-1)
    )
    if len(idx) and (idx.min() < 0 or idx.max() >= len(labels)):
        raise ConfigError(f"indices must lie in [0, {len(labels)}), got {idx.min()}..{idx.max()}")
    import torch

    inputs = encoder(ds, idx, preprocessor, max_length, image_size)
    return EncodedSplit(inputs, torch.as_tensor(labels[idx], dtype=torch.long))
