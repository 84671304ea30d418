"""Deterministic stratified splitting and subsampling of labelled examples.

Used to draw the held-out test split of a corpus that has none, and to cap split sizes
(``max_train`` / ``max_test``). Both are pure functions of the labels and a seed.

Per-class quotas follow the largest-remainder (Hamilton) method, so the requested total
is met exactly and every class gets ``floor`` or ``ceil`` of its proportional share.
Unlike :func:`sklearn.model_selection.train_test_split`, this works for classes with a
single example (needed for the 20-image ``cifar10-samples`` corpus).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from securefed.exceptions import ConfigError

__all__ = ["stratified_split", "stratified_subsample"]

IntArray = npt.NDArray[np.int64]


def _quotas(counts: npt.NDArray[np.int64], total: int) -> IntArray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder)."""
    n = int(counts.sum())
    exact = counts * (total / n)
    quota = np.floor(exact).astype(np.int64)
    remainder = exact - quota
    # Stable order: largest remainder first, then the larger class, then class id.
    order = np.lexsort((np.arange(len(counts)), -counts, -remainder))
    short = total - int(quota.sum())
    for c in order:
        if short <= 0:
            break
        if quota[c] < counts[c]:
            quota[c] += 1
            short -= 1
    return quota


def stratified_subsample(labels: npt.ArrayLike, size: int, *, seed: int) -> IntArray:
    """Pick ``size`` indices keeping class proportions, deterministically by ``seed``.

    Parameters
    ----------
    labels : array_like of int
        One label per example.
    size : int
        How many indices to pick; ``size >= len(labels)`` returns every index.
    seed : int
        Seed of the :class:`numpy.random.Generator` that orders each class.

    Returns
    -------
    numpy.ndarray
        Sorted ``int64`` indices into ``labels``.
    """
    y = np.asarray(labels).reshape(-1)
    if size < 0:
        raise ConfigError(f"size must be >= 0, got {size}")
    if size >= len(y):
        return np.arange(len(y), dtype=np.int64)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = _quotas(counts.astype(np.int64), size)
    rng = np.random.default_rng(seed)
    picked: list[IntArray] = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        picked.append(rng.permutation(members)[: quota[c]])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def stratified_split(
    labels: npt.ArrayLike, *, test_fraction: float, seed: int
) -> tuple[IntArray, IntArray]:
    """Split indices into disjoint, stratified train and test sets.

    Parameters
    ----------
    labels : array_like of int
        One label per example.
    test_fraction : float
        Share of examples in the test split, in ``(0, 1)``. The test size is
        ``round(n * test_fraction)``, at least 1 and at most ``n - 1``.
    seed : int
        Seed; the same labels, fraction and seed always give the same split.

    Returns
    -------
    train, test : numpy.ndarray
        Sorted ``int64`` indices; disjoint, together covering ``range(len(labels))``.

    Raises
    ------
    ConfigError
        If ``test_fraction`` is outside ``(0, 1)`` or there are fewer than 2 examples.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    y = np.asarray(labels).reshape(-1)
    n = len(y)
    if n < 2:
        raise ConfigError(f"need at least 2 examples to split, got {n}")
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    test = stratified_subsample(y, n_test, seed=seed)
    mask = np.ones(n, dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask).astype(np.int64), test
