"""Tiny random Hugging Face folders for tests: one per supported ``model_type``.

Every family in :data:`~securefed.models.architecture.ARCHITECTURES` gets a writer that
produces a complete, loadable folder (``config.json``, ``model.safetensors`` and, for
text, a real WordPiece tokenizer; for images, a ``preprocessor_config.json``) with
hidden size 32, 2 layers and 2 heads; vision models take 32 × 32 images in 8 × 8
patches. Weights are random but deterministic (seed 0, drawn inside
:func:`torch.random.fork_rng` so the caller's RNG state is untouched), and each folder
is written in well under a second. They exercise the code paths, not accuracy.

The text tokenizer is a BERT WordPiece over :data:`TINY_VOCAB` (the five BERT special
tokens, ~150 common English words, the letters and digits, and ``##`` continuations of
each letter), so any plain English text tokenizes, unknown words falling back to
letters. The RoBERTa folder reuses it (RoBERTa's own byte-level BPE needs a merges
table that would only add size), with ``pad_token_id`` set to match.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPConfig,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)

from securefed.models._hf import quiet_transformers
from securefed.registry import Registry

__all__ = ["TINY_VOCAB", "TINY_WRITERS", "write_tiny_backbone"]

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORD_TEXT = """
the of and to a in is it you that he was for on are with as i his they be at one have
this from or had by not word but what some we can out other were all there when up use
your how said an each she which do their time if will way about many then them write
would like so these her long make thing see him two has look more day could go come did
number sound no most people my over know water than call first who may down side been
now find any new work part take get place made live where after back little only round
man year came show every good me give our under name very through just form great think
say help low line differ turn cause much mean before move right boy old too same tell
does set three want air well also play small end put home read hand port large spell add
even land here must big high such follow act why ask men change went light kind off need
house picture try us again animal point mother world near build self earth father news
sport business politics film music game team market
"""
_WORDS = _WORD_TEXT.split()
#: The tiny WordPiece vocabulary, in id order (``[PAD]`` is 0).
TINY_VOCAB: tuple[str, ...] = tuple(
    dict.fromkeys(
        _SPECIALS
        + list(string.punctuation)
        + list(string.digits)
        + list(string.ascii_lowercase)
        + [f"##{c}" for c in string.ascii_lowercase + string.digits]
        + _WORDS
    )
)

_HIDDEN: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
_TEXT: dict[str, Any] = dict(
    intermediate_size=64, max_position_embeddings=128, vocab_size=len(TINY_VOCAB)
)
_VISION: dict[str, Any] = dict(image_size=32, patch_size=8, num_channels=3)

#: ``model_type`` → writer of a tiny folder (config, weights, pre-processing files).
TINY_WRITERS: Registry[Callable[[Path], None]] = Registry("tiny backbone (model_type)")


def write_tiny_backbone(model_type: str, folder: Path) -> Path:
    """Write a tiny random Hugging Face folder of family ``model_type`` into ``folder``.

    Parameters
    ----------
    model_type : str
        One of ``TINY_WRITERS.names()``: ``bert``, ``roberta``, ``vit``, ``dinov2``,
        ``clip``.
    folder : Path
        Created if needed; existing files of the same names are overwritten.

    Returns
    -------
    Path
        ``folder``, ready for :func:`~securefed.models.backbones.resolve_backbone`.

    Raises
    ------
    UnknownNameError
        If there is no tiny writer for ``model_type``.
    """
    writer = TINY_WRITERS.get(model_type)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer(folder)
    return folder


def _save_model(model_cls: type[PreTrainedModel], config: PretrainedConfig, folder: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_cls(config)
    with quiet_transformers():
        model.save_pretrained(str(folder))


def _save_tokenizer(folder: Path) -> None:
    vocab = {token: i for i, token in enumerate(TINY_VOCAB)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=128)
    with quiet_transformers():
        tokenizer.save_pretrained(str(folder))
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")


def _save_image_processor(folder: Path) -> None:
    spec: dict[str, Any] = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": _VISION["image_size"], "width": _VISION["image_size"]},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(spec, indent=2) + "\n")


def _bert(folder: Path) -> None:
    _save_model(BertModel, BertConfig(**_HIDDEN, **_TEXT), folder)
    _save_tokenizer(folder)


def _roberta(folder: Path) -> None:
    # Ids follow TINY_VOCAB: [PAD]=0, [CLS]=2, [SEP]=3; RoBERTa offsets positions by pad+1.
    config = RobertaConfig(
        **_HIDDEN,
        **{**_TEXT, "max_position_embeddings": 130},
        type_vocab_size=2,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    _save_model(RobertaModel, config, folder)
    _save_tokenizer(folder)


def _vit(folder: Path) -> None:
    _save_model(ViTModel, ViTConfig(**_HIDDEN, **_VISION, intermediate_size=64), folder)
    _save_image_processor(folder)


def _dinov2(folder: Path) -> None:
    _save_model(Dinov2Model, Dinov2Config(**_HIDDEN, **_VISION, mlp_ratio=2), folder)
    _save_image_processor(folder)


def _clip(folder: Path) -> None:
    config = CLIPConfig(
        text_config={
            **_HIDDEN,
            "intermediate_size": 64,
            "vocab_size": len(TINY_VOCAB),
            "max_position_embeddings": 32,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
        },
        vision_config={**_HIDDEN, **_VISION, "intermediate_size": 64},
        projection_dim=16,
    )
    _save_model(CLIPModel, config, folder)
    _save_image_processor(folder)


for _name, _writer in (
    ("bert", _bert),
    ("roberta", _roberta),
    ("vit", _vit),
    ("dinov2", _dinov2),
    ("clip", _clip),
):
    TINY_WRITERS.register(_name, _writer)
