"""Randomness for DP-SGD: a CSPRNG source for production, a seeded one for experiments.

DP-SGD (Abadi et al. 2016, arXiv:1607.00133) draws two kinds of randomness: the
Poisson sample of each step (each example in with probability ``q``) and the Gaussian
noise added to the clipped gradient sum. The privacy analysis assumes both are
unpredictable to the adversary. Floating-point Gaussian samplers built on
non-cryptographic generators (numpy's global generator in Flower's DP wrappers, torch's
Mersenne Twister in Opacus without ``secure_mode``) do not give that guarantee.

:class:`SecureSource` draws uniforms from a ChaCha20 keystream keyed by 32 bytes of the
operating system's CSPRNG (re-keyed for every call) and turns them into Gaussians by the
Box–Muller transform; it refuses a seed. :class:`SeededSource` is a seeded numpy
generator for reproducible experiments. Both sit behind the :class:`RandomSource`
interface and in the registry :data:`RANDOM_SOURCES`.

Note: like every floating-point Gaussian sampler, Box–Muller on doubles does not close
the floating-point attack of Mironov (CCS 2012); that needs discrete noise and is out of
scope here.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from securefed.exceptions import ConfigError
from securefed.registry import Registry

__all__ = ["RANDOM_SOURCES", "RandomSource", "SecureSource", "SeededSource", "make_source"]

_TWO_PI = 2.0 * np.pi
_U53 = 2.0**-53


class RandomSource(abc.ABC):
    """Uniform and Gaussian samples for Poisson sampling and DP noise."""

    #: Whether the source is fit for production (cryptographically secure, unseeded).
    secure: bool = False

    @abc.abstractmethod
    def uniform(self, size: int) -> npt.NDArray[np.float64]:
        """``size`` samples uniform on ``[0, 1)``."""

    @abc.abstractmethod
    def normal(self, size: int) -> npt.NDArray[np.float64]:
        """``size`` standard normal samples."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (crash resume): a resumed seeded run must not
        replay noise it already released. Stateless sources return ``{}``."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - stateless default
        """Restore :meth:`state_dict` output."""

    def poisson_mask(self, n: int, rate: float) -> npt.NDArray[np.bool_]:
        """Each of ``n`` items in independently with probability ``rate``."""
        if not 0.0 < rate <= 1.0:
            raise ConfigError(f"sampling rate must be in (0, 1], got {rate!r}")
        return self.uniform(n) < rate


class SecureSource(RandomSource):
    """ChaCha20 keystream (fresh OS key per call) → uniforms → Box–Muller Gaussians."""

    secure = True

    @staticmethod
    def _words(count: int) -> npt.NDArray[np.uint64]:
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None)
        stream = cipher.encryptor().update(bytes(8 * count))
        return np.frombuffer(stream, dtype="<u8").astype(np.uint64)

    def uniform(self, size: int) -> npt.NDArray[np.float64]:
        """53-bit uniforms on ``[0, 1)`` from the keystream."""
        _check_size(size)
        return (self._words(size) >> np.uint64(11)).astype(np.float64) * _U53

    def normal(self, size: int) -> npt.NDArray[np.float64]:
        """Box–Muller pairs; ``u1`` is taken on ``(0, 1]`` so the log is finite."""
        _check_size(size)
        half = (size + 1) // 2
        words = self._words(2 * half) >> np.uint64(11)
        u1 = (words[:half].astype(np.float64) + 1.0) * _U53
        u2 = words[half:].astype(np.float64) * _U53
        radius = np.sqrt(-2.0 * np.log(u1))
        out = np.concatenate([radius * np.cos(_TWO_PI * u2), radius * np.sin(_TWO_PI * u2)])
        return out[:size]


class SeededSource(RandomSource):
    """A seeded ``numpy.random.Generator``: reproducible, for experiments only."""

    def __init__(self, seed: int | np.random.Generator) -> None:
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        """The generator's bit-generator state."""
        return {"bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved generator state (a malformed one is a ConfigError)."""
        try:
            self._rng.bit_generator.state = dict(state["bit_generator"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed seeded-source state: {exc!r}") from None

    def uniform(self, size: int) -> npt.NDArray[np.float64]:
        """Uniforms from the seeded generator."""
        _check_size(size)
        return self._rng.random(size)

    def normal(self, size: int) -> npt.NDArray[np.float64]:
        """Standard normals from the seeded generator."""
        _check_size(size)
        return self._rng.standard_normal(size)


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ConfigError(f"size must be an int >= 0, got {size!r}")


RANDOM_SOURCES: Registry[type[RandomSource]] = Registry("random source")
RANDOM_SOURCES.register("secure", SecureSource)
RANDOM_SOURCES.register("seeded", SeededSource)


def make_source(name: str, seed: int | None = None) -> RandomSource:
    """The source ``name`` (``"secure"`` or ``"seeded"``).

    Raises
    ------
    ConfigError
        If ``"secure"`` is given a seed (production randomness is never seeded) or
        ``"seeded"`` lacks one; :class:`~securefed.exceptions.UnknownNameError` for an
        unknown name.
    """
    cls = RANDOM_SOURCES.get(name)
    if cls.secure:
        if seed is not None:
            raise ConfigError("the secure random source refuses a seed: production DP "
                              "noise and sampling come from the OS CSPRNG")
        return cls()
    if seed is None:
        raise ConfigError(f"random source {name!r} needs a seed")
    return SeededSource(seed)
