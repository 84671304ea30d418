"""The k-regular neighbour graph of SecAgg+ and its recovery-failure probability.

Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation") make every client agree a
pairwise mask with, and secret-share its keys among, all ``n - 1`` others: O(n) work
and bytes per client. Bell et al. 2020 (arXiv:2009.05807, SecAgg+) replace the
complete graph by a sparse random graph of degree ``k = O(log n)``: masks and shares
travel only along edges, yet the server learns nothing beyond the sum as long as the
graph stays connected after dropouts and the shares of every client needed in
unmasking can be reconstructed.

The graph here is a **randomly relabelled Harary graph** ``H_{k,n}``: the clients are
put on a ring in a random order drawn from a public 256-bit seed (ChaCha20, as the
masks, so the order does not depend on numpy's generator), and each is joined to the
``k/2`` nearest clients on either side. It is k-regular for even ``k``; ``k = n - 1``
gives the complete graph (Bonawitz et al.). Each client shares its secrets among its
``k`` neighbours with threshold ``t``; ``t > k/2`` (default ``floor(k/2) + 1``). An
honest neighbour reveals, for a given client, either its self-mask share or its
pairwise-key share, never both; with ``2t > k`` the server cannot collect ``t`` shares
of each from honest neighbours, so it never learns both secrets of one client.

Default degree
--------------
``default_degree(n) = min(n - 1, 2 * ceil(log2 n))`` (raised to at least 2): the
``O(log n)`` degree of Bell et al., with the constant 2 and even parity chosen so the
ring construction applies. Bell et al. size ``k`` from the dropout and corruption
rates and a failure target; this default is a starting point, not a guarantee. Check
it with :func:`recovery_failure_probability` (``securefed secagg plan`` reports it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from securefed.exceptions import ConfigError
from securefed.secagg.masks import SEED_BYTES, expand_mask

__all__ = [
    "GraphConfig",
    "NeighbourGraph",
    "build_graph",
    "default_degree",
    "default_threshold",
    "recovery_failure_probability",
]


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def default_degree(n: int) -> int:
    """``min(n - 1, max(2, 2 * ceil(log2 n)))``: the O(log n) degree of Bell et al. 2020.

    Parameters
    ----------
    n : int
        Number of clients, ``>= 2``.
    """
    n = _check_int("n", n, 2)
    return min(n - 1, max(2, 2 * math.ceil(math.log2(n))))


def default_threshold(k: int) -> int:
    """``floor(k/2) + 1``: the smallest threshold with ``t > k/2``."""
    return _check_int("k", k, 1) // 2 + 1


@dataclass(frozen=True)
class GraphConfig:
    """Validated SecAgg+ graph parameters.

    Parameters
    ----------
    num_clients : int
        ``n >= 2``.
    degree : int
        ``k``: neighbours per client; even and ``2 <= k < n``, or ``k = n - 1``
        (complete graph).
    threshold : int
        ``t``: shares needed to reconstruct a client's secret; ``k/2 < t <= k``.

    Raises
    ------
    ConfigError
        Naming the parameter and its value when a constraint fails.
    """

    num_clients: int
    degree: int
    threshold: int

    def __post_init__(self) -> None:
        n = _check_int("num_clients", self.num_clients, 2)
        k = _check_int("degree", self.degree, 1)
        t = _check_int("threshold", self.threshold, 1)
        if k > n - 1:
            raise ConfigError(f"degree k={k} must be <= num_clients - 1 = {n - 1}")
        if k != n - 1 and k % 2:
            raise ConfigError(
                f"degree k={k} must be even (or n - 1 = {n - 1}) for a k-regular Harary graph"
            )
        if not k / 2 < t <= k:
            raise ConfigError(
                f"threshold t={t} must satisfy k/2 < t <= k for k={k} (t > k/2 keeps the "
                "server from reconstructing both secrets of one client)"
            )
        object.__setattr__(self, "num_clients", n)
        object.__setattr__(self, "degree", k)
        object.__setattr__(self, "threshold", t)

    @classmethod
    def for_clients(
        cls, n: int, degree: int | None = None, threshold: int | None = None
    ) -> GraphConfig:
        """Config for ``n`` clients with defaults for the missing degree and threshold."""
        n = _check_int("num_clients", n, 2)
        k = default_degree(n) if degree is None else degree
        t = default_threshold(k) if threshold is None else threshold
        return cls(num_clients=n, degree=k, threshold=t)


@dataclass(frozen=True)
class NeighbourGraph:
    """A k-regular neighbour graph over client ids.

    Parameters
    ----------
    config : GraphConfig
        The validated ``(n, k, t)``.
    neighbours : Mapping[int, frozenset[int]]
        Each client id to its ``k`` neighbours (symmetric, no self-loops).
    """

    config: GraphConfig
    neighbours: Mapping[int, frozenset[int]]

    def __getitem__(self, client_id: int) -> frozenset[int]:
        try:
            return self.neighbours[client_id]
        except KeyError:
            raise ConfigError(f"client id {client_id!r} is not in the graph") from None

    @property
    def client_ids(self) -> list[int]:
        """The client ids, sorted."""
        return sorted(self.neighbours)


def build_graph(
    client_ids: Sequence[int],
    seed: bytes,
    degree: int | None = None,
    threshold: int | None = None,
) -> NeighbourGraph:
    """Build the randomly relabelled Harary graph ``H_{k,n}`` of SecAgg+ from a seed.

    Parameters
    ----------
    client_ids : sequence of int
        Distinct client ids ``>= 1``, at least 2 (ids are also the non-zero x-coordinates
        of the Shamir shares, :mod:`securefed.secagg.shamir`).
    seed : bytes
        Public 32-byte seed fixing the random ring order (the same seed gives the same
        graph on every machine and numpy version).
    degree, threshold : int or None
        ``k`` and ``t``; ``None`` takes :func:`default_degree` / :func:`default_threshold`.

    Returns
    -------
    NeighbourGraph
        Every client has exactly ``k`` neighbours (Bell et al. 2020, arXiv:2009.05807).

    Raises
    ------
    ConfigError
        If ids repeat or are not ints, or ``(n, k, t)`` is invalid.
    """
    ids = [_check_int("client ids", i, 1) for i in client_ids]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"client ids must be distinct, got {len(ids) - len(set(ids))} repeats")
    config = GraphConfig.for_clients(len(ids), degree, threshold)
    n, k = config.num_clients, config.degree
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise ConfigError(f"seed must be {SEED_BYTES} bytes")
    # Random ring order: sort ids by a 64-bit ChaCha20 key each (ties broken by id).
    keys = expand_mask(bytes(seed), n, 64)
    order = [i for _, i in sorted(zip(keys.tolist(), sorted(ids), strict=True))]
    neighbours: dict[int, set[int]] = {i: set() for i in ids}
    if k == n - 1:
        for i in ids:
            neighbours[i] = set(ids) - {i}
    else:
        for pos, i in enumerate(order):
            for d in range(1, k // 2 + 1):
                j = order[(pos + d) % n]
                neighbours[i].add(j)
                neighbours[j].add(i)
    frozen = {i: frozenset(v) for i, v in neighbours.items()}
    return NeighbourGraph(config=config, neighbours=frozen)


def _binom_cdf_below(k: int, p: float, t: int) -> float:
    """``P[Binom(k, p) < t]``, summed term by term in log space.

    ``math.comb(k, j)`` overflows a float for ``k`` beyond about 1000, so each term is
    ``exp(log C(k, j) + j log p + (k - j) log(1 - p))``, shifted by the largest term.
    """
    terms = range(min(t, k + 1))
    if not terms:
        return 0.0
    if p <= 0.0:
        return 1.0  # Binom = 0 < t
    if p >= 1.0:
        return 1.0 if t > k else 0.0
    logs = [math.lgamma(k + 1) - math.lgamma(j + 1) - math.lgamma(k - j + 1)
            + j * math.log(p) + (k - j) * math.log1p(-p) for j in terms]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def recovery_failure_probability(n: int, k: int, t: int, dropout_rate: float) -> float:
    """Upper bound on the probability that unmasking fails for lack of shares.

    Unmasking needs, for every client whose secret must be reconstructed (the self-mask
    seed of a survivor, the pairwise key of a dropped client), at least ``t`` surviving
    neighbours. If each client drops independently with probability ``p``, a client's
    surviving neighbours number ``Binom(k, 1 - p)``, and the union bound over the ``n``
    clients gives::

        P[fail] <= min(1, n * P[Binom(k, 1 - p) < t])

    (Bell et al. 2020, arXiv:2009.05807, Sec. 3-4; Bonawitz et al. 2017 is the case
    ``k = n - 1``). It is an upper bound, not an exact probability: the events of
    different clients overlap.

    Parameters
    ----------
    n, k, t : int
        Clients, degree and threshold (validated as in :class:`GraphConfig`).
    dropout_rate : float
        Per-client dropout probability ``p`` in ``[0, 1]``.

    Returns
    -------
    float
        A probability in ``[0, 1]``.
    """
    config = GraphConfig(num_clients=n, degree=k, threshold=t)
    if (
        isinstance(dropout_rate, bool)
        or not isinstance(dropout_rate, int | float)
        or not (0.0 <= dropout_rate <= 1.0)
    ):
        raise ConfigError(f"dropout_rate must be a number in [0, 1], got {dropout_rate!r}")
    tail = _binom_cdf_below(config.degree, 1.0 - float(dropout_rate), config.threshold)
    return min(1.0, config.num_clients * tail)
