"""Client sampling by partition id, so that a seed gives the same rounds on any engine.

The strategy draws **partition ids** (sorted, from :class:`strategies.identities.
NodeIdentities`) with its generator and only then maps them to Flower node ids, which
are random in every simulation and deployment. The same config and seed therefore
sample the same partitions on Flower's simulation engine, a SuperLink deployment and
the in-process grid.

* :func:`draw_fixed`: exactly ``k`` partitions without replacement (positions drawn
  with ``rng.choice``; ids are never used as numbers).
* :func:`draw_poisson`: each partition of the population joins independently with
  probability ``q`` (user-level DP with sampling amplification; McMahan et al. 2018,
  arXiv:1710.06963). The mask comes from a :class:`~securefed.privacy.noise.
  RandomSource`: the ChaCha20 CSPRNG when the sample must stay secret
  (``[user_dp] randomness = "secure"``, the default: amplification by sampling assumes
  the server's sample is unpredictable), a seeded one only for reproducible
  experiments. Only the seeded path is reproducible, by design.

numpy-only; never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefed.privacy.noise import RandomSource, SeededSource

__all__ = ["draw_fixed", "draw_poisson"]


def draw_fixed(rng: np.random.Generator, partitions: Sequence[int], k: int) -> list[int]:
    """``k`` of ``partitions`` (sorted ids) without replacement, in draw order."""
    chosen = rng.choice(len(partitions), size=k, replace=False)
    return [int(partitions[int(i)]) for i in chosen]


def draw_poisson(rng: np.random.Generator, source: RandomSource | None,
                 partitions: Sequence[int], q: float) -> list[int]:
    """The partitions that join a Poisson-sampled round at rate ``q``, sorted.

    ``source`` draws the mask (``None``: a :class:`SeededSource` over ``rng``). The
    population is first put in a random order by ``rng`` (as every draw of
    :func:`draw_fixed` does), then each member is kept with probability ``q``.
    """
    population = draw_fixed(rng, partitions, len(partitions))
    mask = (source or SeededSource(rng)).poisson_mask(len(population), q)
    return sorted(p for p, keep in zip(population, mask, strict=True) if keep)
