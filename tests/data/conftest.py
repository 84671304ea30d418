"""Shared fixtures for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A BERT WordPiece tokenizer over a 16-word vocabulary written to a temp dir.

    transformers 5 silently ignores ``vocab_file=`` on ``BertTokenizerFast`` (the
    vocabulary ends up holding only the special tokens); ``vocab=<path>`` works.
    """
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "news", "sport", "##s"]
    path: Path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = transformers.BertTokenizerFast(vocab=str(path))
    assert tok.convert_tokens_to_ids("cat") == words.index("cat")
    return tok
