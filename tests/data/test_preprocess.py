"""Encoding splits: token tensors, pixel tensors, batching."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from securefed.data import (
    ENCODERS,
    EncodedSplit,
    encode_images,
    encode_split,
    encode_text,
    label_array,
    load_dataset,
)
from securefed.exceptions import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Spec:
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def test_encode_text_shapes(tiny_tokenizer) -> None:
    out = encode_text(
        ["the cat sat on the mat", "a dog ran", "sports " * 40], tiny_tokenizer, max_length=12
    )
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    for v in out.values():
        assert v.shape == (3, 12)
        assert v.dtype == torch.int64
    ids = out["input_ids"]
    vocab = tiny_tokenizer.get_vocab()
    assert ids[0, 0] == vocab["[CLS]"]
    assert ids[0, 1] == vocab["the"]
    assert ids[1, -1] == vocab["[PAD]"]  # padded
    assert out["attention_mask"][2].all()  # truncated, no padding
    assert ids[2, -1] == vocab["[SEP]"]


def test_encode_text_empty(tiny_tokenizer) -> None:
    out = encode_text([], tiny_tokenizer, max_length=8)
    assert out["input_ids"].shape == (0, 8)


def test_encode_images_gray_and_rgb() -> None:
    gray = np.full((2, 8, 8, 1), 255, dtype=np.uint8)
    out = encode_images(gray, Spec(), size=16)
    assert out.shape == (2, 3, 16, 16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.ones_like(out))  # (1 - 0.5) / 0.5
    rgb = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    out = encode_images(rgb, Spec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 2.0)), size=8)
    assert out.shape == (1, 3, 8, 8)
    torch.testing.assert_close(out[0, 0], torch.ones(8, 8))
    torch.testing.assert_close(out[0, 1:], torch.zeros(2, 8, 8))


def test_encode_images_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="images"):
        encode_images(np.zeros((2, 8, 8), dtype=np.uint8), Spec(), size=8)
    with pytest.raises(ConfigError, match="std"):
        encode_images(np.zeros((1, 8, 8, 1), dtype=np.uint8), Spec(std=(1.0, 0.0, 1.0)), size=8)


def test_encode_split_image_with_indices() -> None:
    data = load_dataset("digits")
    idx = np.array([5, 0, 7])
    enc = encode_split(data, "train", Spec(), image_size=32, indices=idx)
    assert isinstance(enc, EncodedSplit)
    assert len(enc) == 3
    assert enc.inputs["pixel_values"].shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(enc.labels.numpy(), label_array(data.train)[idx])
    assert enc.labels.dtype == torch.int64


def test_encode_split_text_and_batches(tiny_tokenizer) -> None:
    data = load_dataset("bbc-news", max_test=25)
    enc = encode_split(data, "test", tiny_tokenizer, max_length=16)
    assert len(enc) == 25
    assert enc.inputs["input_ids"].shape == (25, 16)
    batches = list(enc.batches(10))
    assert [len(b["labels"]) for b in batches] == [10, 10, 5]
    assert set(batches[0]) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert [len(b["labels"]) for b in enc.batches(10, drop_last=True)] == [10, 10]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = torch.cat([b["labels"] for b in enc.batches(7, shuffle=True, generator=g1)])
    s2 = torch.cat([b["labels"] for b in enc.batches(7, shuffle=True, generator=g2)])
    torch.testing.assert_close(s1, s2)
    assert sorted(s1.tolist()) == sorted(enc.labels.tolist())
    sub = enc.subset([3, 1])
    torch.testing.assert_close(sub.inputs["input_ids"], enc.inputs["input_ids"][[3, 1]])


def test_encode_split_errors(tiny_tokenizer) -> None:
    data = load_dataset("digits")
    with pytest.raises(UnknownNameError, match="test, train"):
        encode_split(data, "validation", Spec())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="indices"):
        encode_split(data, "test", Spec(), indices=[len(data.test)])
    with pytest.raises(ConfigError, match="do not match"):
        EncodedSplit({"x": torch.zeros(3, 2)}, torch.zeros(2, dtype=torch.long))
    assert ENCODERS.names() == ["text", "image"]
