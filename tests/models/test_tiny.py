"""Tiny random test backbones: fast, deterministic, loadable, real tokenizers."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from securefed.exceptions import UnknownNameError
from securefed.models import write_tiny_backbone
from securefed.models.tiny import TINY_VOCAB

from .conftest import TINY_TYPES


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_tiny_is_fast_small_and_deterministic(tmp_path: Path, model_type: str) -> None:
    start = time.perf_counter()
    first = write_tiny_backbone(model_type, tmp_path / "a")
    assert time.perf_counter() - start < 1.0
    second = write_tiny_backbone(model_type, tmp_path / "b")
    assert _digest(first / "model.safetensors") == _digest(second / "model.safetensors")
    config = AutoConfig.from_pretrained(first)
    assert config.model_type == model_type
    vision = getattr(config, "vision_config", config)
    assert vision.hidden_size == 32
    assert vision.num_hidden_layers == 2
    assert vision.num_attention_heads == 2


def test_tiny_does_not_disturb_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    write_tiny_backbone("bert", tmp_path)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_tiny_tokenizer_handles_english(tiny_folders: dict[str, Path], model_type: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_folders[model_type])
    ids = tokenizer("The team won the game, again!")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]"
    assert tokens[-1] == "[SEP]"
    assert tokenizer.unk_token_id not in ids
    assert "team" in tokens
    assert "game" in tokens
    odd = tokenizer("Zyxwvut qwerty 2024")["input_ids"]  # unknown words fall back to letters
    assert tokenizer.unk_token_id not in odd
    assert max(ids + odd) < len(TINY_VOCAB)


def test_unknown_tiny_type(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="bert"):
        write_tiny_backbone("gpt2", tmp_path)


def test_fresh_tiny_fixture(fresh_tiny: Callable[[str], Path]) -> None:
    assert (fresh_tiny("vit") / "preprocessor_config.json").is_file()
