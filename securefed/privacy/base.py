"""The accountant interface: one small :class:`Accountant` ABC and argument checks.

An accountant tracks the privacy spent by a sequence of Poisson-subsampled Gaussian
steps of DP-SGD (Abadi et al. 2016, arXiv 1607.00133). Its state is its *history*: a
list of ``(noise_multiplier, sample_rate, num_steps)`` entries, consecutive equal
``(noise_multiplier, sample_rate)`` pairs merged (as Opacus does). Epsilon is always
recomputed from the whole history, so an accountant rebuilt from a saved state gives
bit-for-bit the same epsilon as the one that wrote it, and ``step(num_steps=n)`` equals
``n`` calls of ``step(num_steps=1)``. Implementations and their registry live in
:mod:`securefed.privacy.accountants`.
"""

from __future__ import annotations

import abc
import math
import numbers
from typing import Any, ClassVar

from securefed.exceptions import ConfigError, PrivacyError

__all__ = [
    "STATE_VERSION",
    "Accountant",
    "HistoryEntry",
    "is_real",
    "validate_delta",
    "validate_step",
]

#: Version of the ``state_dict`` layout; bumped on incompatible changes.
STATE_VERSION = 1

HistoryEntry = tuple[float, float, int]


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (``bool`` excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def validate_step(noise_multiplier: object, sample_rate: object, num_steps: object) -> None:
    """Check the arguments of one composition step.

    Raises
    ------
    ConfigError
        If ``noise_multiplier`` is not a finite number > 0, ``sample_rate`` is not in
        ``(0, 1]`` or ``num_steps`` is not an integer >= 1. The message names the
        argument and its value.
    """
    if not is_real(noise_multiplier) or not (
        math.isfinite(float(noise_multiplier)) and float(noise_multiplier) > 0  # type: ignore[arg-type]
    ):
        raise ConfigError(
            f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}"
        )
    if not is_real(sample_rate) or not 0 < float(sample_rate) <= 1:  # type: ignore[arg-type]
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if not isinstance(num_steps, numbers.Integral) or isinstance(num_steps, bool) or num_steps < 1:
        raise ConfigError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def validate_delta(delta: object) -> float:
    """Return ``delta`` as a float if it lies in ``(0, 1)``, else raise :class:`ConfigError`."""
    if not is_real(delta) or not 0 < float(delta) < 1:  # type: ignore[arg-type]
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)  # type: ignore[arg-type]


class Accountant(abc.ABC):
    """Tracks the privacy spent by a sequence of Poisson-subsampled Gaussian steps.

    Subclasses set :attr:`mechanism` and :attr:`is_upper_bound` and implement
    :meth:`_epsilon`, which maps a non-empty history and a delta to an epsilon.

    Notes
    -----
    Each step is one application of the subsampled Gaussian mechanism of DP-SGD
    (Abadi et al. 2016, arXiv 1607.00133): every record joins the batch independently
    with probability ``sample_rate`` and Gaussian noise of standard deviation
    ``noise_multiplier`` (times the clipping norm) is added to the summed gradients.
    Neighbouring datasets differ by adding or removing one record.
    """

    #: Registry name of the analysis, also written into :meth:`state_dict`.
    mechanism: ClassVar[str]
    #: Whether :meth:`get_epsilon` is a proven upper bound (``False`` for approximations).
    is_upper_bound: ClassVar[bool] = True

    def __init__(self) -> None:
        self._history: list[HistoryEntry] = []

    # -- composition ----------------------------------------------------------------

    def step(self, *, noise_multiplier: float, sample_rate: float, num_steps: int = 1) -> None:
        """Compose ``num_steps`` subsampled Gaussian steps onto the history.

        Parameters
        ----------
        noise_multiplier : float
            Noise standard deviation divided by the clipping norm; must be > 0.
        sample_rate : float
            Poisson sampling probability of each record, in ``(0, 1]``.
        num_steps : int
            Number of steps with these parameters, >= 1.

        Raises
        ------
        ConfigError
            If an argument is out of range (nothing is composed then).
        """
        validate_step(noise_multiplier, sample_rate, num_steps)
        sigma, q, n = float(noise_multiplier), float(sample_rate), int(num_steps)
        if self._history and self._history[-1][:2] == (sigma, q):
            last = self._history[-1]
            self._history[-1] = (sigma, q, last[2] + n)
        else:
            self._history.append((sigma, q, n))
        self._on_change()

    @property
    def history(self) -> tuple[HistoryEntry, ...]:
        """The composed ``(noise_multiplier, sample_rate, num_steps)`` entries."""
        return tuple(self._history)

    @property
    def num_steps(self) -> int:
        """Total number of composed steps."""
        return sum(n for _, _, n in self._history)

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta``.

        Parameters
        ----------
        delta : float
            Target delta, in ``(0, 1)``.

        Returns
        -------
        float
            A non-negative epsilon (``0.0`` before any step; ``inf`` when the analysis
            cannot bound it).

        Raises
        ------
        ConfigError
            If ``delta`` is out of range.
        PrivacyError
            If the analysis returns NaN.
        """
        d = validate_delta(delta)
        if not self._history:
            return 0.0
        eps = float(self._epsilon(tuple(self._history), d))
        if math.isnan(eps):
            raise PrivacyError(
                f"{self.mechanism} accountant returned NaN for delta={d!r} and history "
                f"{self._history!r}"
            )
        return max(eps, 0.0)

    @abc.abstractmethod
    def _epsilon(self, history: tuple[HistoryEntry, ...], delta: float) -> float:
        """Epsilon of a non-empty, validated history at a validated delta."""

    def _on_change(self) -> None:
        """Hook: called after the history changed (for caches)."""
        return None

    # -- state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the state.

        Returns
        -------
        dict
            ``{"mechanism": str, "version": int, "history": [[sigma, q, steps], ...]}``.
            Floats round-trip exactly through :func:`json.dumps` / :func:`json.loads`.
        """
        return {
            "mechanism": self.mechanism,
            "version": STATE_VERSION,
            "history": [[s, q, n] for s, q, n in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict` of the same mechanism.

        Only a fresh accountant (no steps yet) accepts a state: overwriting composed
        steps would forget privacy already spent.

        Raises
        ------
        PrivacyError
            If the state belongs to another mechanism, is malformed, has an unknown
            version, or this accountant already holds steps. Nothing is changed then.
        """
        if self._history:
            raise PrivacyError(
                f"refusing to load a state into a {self.mechanism} accountant that already "
                f"holds {self.num_steps} steps; create a fresh accountant"
            )
        if not isinstance(state, dict):
            raise PrivacyError(f"accountant state must be a dict, got {type(state).__name__}")
        mechanism = state.get("mechanism")
        if mechanism != self.mechanism:
            raise PrivacyError(
                f"accountant state of mechanism {mechanism!r} cannot be loaded into a "
                f"{self.mechanism!r} accountant"
            )
        if state.get("version") != STATE_VERSION:
            raise PrivacyError(
                f"unsupported accountant state version {state.get('version')!r}; "
                f"expected {STATE_VERSION}"
            )
        raw = state.get("history")
        if not isinstance(raw, list):
            raise PrivacyError(f"accountant state 'history' must be a list, got {raw!r}")
        history: list[HistoryEntry] = []
        for entry in raw:
            if not isinstance(entry, list | tuple) or len(entry) != 3:
                raise PrivacyError(f"malformed accountant history entry {entry!r}")
            try:
                validate_step(*entry)
            except ConfigError as exc:
                raise PrivacyError(f"malformed accountant history entry {entry!r}: {exc}") from exc
            history.append((float(entry[0]), float(entry[1]), int(entry[2])))
        self._history = history
        self._on_change()

    def copy(self) -> Accountant:
        """An independent accountant of the same mechanism holding the same history.

        Useful to ask "what would epsilon be after this round?" without spending it.
        """
        clone = type(self)()
        clone.load_state_dict(self.state_dict())
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.num_steps}, history={self._history!r})"
