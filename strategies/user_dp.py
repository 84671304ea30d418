"""User-level DP: Flower's central-DP wrappers, made exact, strict and accounted.

DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963) clips each client's update
``Δ_i = x_i - g`` to L2 norm ``C``, averages with a **fixed denominator** ``m`` (the
expected number of clients a round) and adds Gaussian noise of standard deviation
``z·C/m``; one round is then the Gaussian mechanism with noise multiplier ``z`` on the
sum, and with Poisson client sampling at rate ``q`` its privacy loss across rounds is
that of the Poisson-subsampled Gaussian, which the accountants of
:mod:`securefed.privacy` compose. Adaptive clipping (Andrew et al. 2021,
arXiv:1905.03871) moves ``C`` towards the ``γ``-quantile of the update norms from a
noisy count of unclipped updates; splitting ``z`` between the update
(``z_Δ = (z^-2 - (2σ_b)^-2)^-1/2``) and the count (``σ_b``) keeps the round a ``z``
Gaussian mechanism (their Theorem 1).

The four classes subclass Flower's own wrappers
(``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping``) and keep their
configuration, clipping-norm injection (``"clipping_norm"`` in the train config),
noise split for adaptive clipping, norm function and summaries. What they replace,
and why:

* **noise** comes from a :class:`~securefed.privacy.noise.RandomSource` (ChaCha20 CSPRNG
  in production), not from numpy's global generator;
* the aggregate is rescaled to the **fixed denominator** ``m`` (Flower divides by the
  number of replies, whose sensitivity is not ``C/m`` when fewer reply);
* **fewer replies than sampled** (or fewer clients in a secure sum) is a
  :class:`~securefed.exceptions.PrivacyError` in strict mode; nothing is released;
* **accounting**: every release composes ``(z, q)`` into an accountant, a round that
  would exceed the budget is refused *before* clients train
  (:class:`~securefed.exceptions.PrivacyBudgetExhausted`), and a ledger row goes to
  the observer;
* server-side clipping works on securefed's packed payloads (by key);
* client-side clipping is **verified** where the server can see updates (plaintext);
* the adaptive update uses unclipped bits (``b_i = 1[‖Δ_i‖ ≤ C]``) as in the paper:
  Flower 1.41 feeds its *clipped* bits into the same geometric rule, which moves ``C``
  the wrong way; the noise of a round uses that round's ``C``.

Weights: the mean is uniform over clients (the clipping mod sends weight 1; see
:mod:`securefed.app.clipping_mod`). This module is numpy-only; it never imports torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_NORM_BIT, get_norm

from securefed.exceptions import ConfigError, PayloadError, PrivacyBudgetExhausted, PrivacyError
from securefed.privacy.base import Accountant
from securefed.privacy.noise import RandomSource
from securefed.registry import Registry
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.records import (
    ARRAYS_KEY,
    payload_to_record,
    read_payload,
    record_to_payload,
    write_payload,
)

__all__ = ["KEY_REPORT_NORM_BIT", "USER_DP_WRAPPERS", "PrivacyObserver", "UserDPSettings",
           "flat_clip"]

log = logging.getLogger(__name__)

#: Train-config key: the client reports its clipped bit (client-side adaptive clipping).
KEY_REPORT_NORM_BIT = "securefed.report-norm-bit"

#: Relative slack on a client-clipped norm (float32 rounding of ``g + clip(Δ)``).
_NORM_SLACK = 1e-4


def flat_clip(new: list[np.ndarray], old: list[np.ndarray], clipping_norm: float) -> bool:
    """Replace ``new`` by ``old + clip(new - old)`` in place (FlatClip, McMahan et al.
    2018); return whether the update was clipped.

    Flower's ``compute_adaptive_clip_model_update`` does the same but divides by the
    norm of a zero update (``ZeroDivisionError``); a zero update is left as it is here.
    """
    update = [a - b for a, b in zip(new, old, strict=True)]
    norm = get_norm(update)
    if norm <= clipping_norm:
        return False
    scale = clipping_norm / norm
    for i, (b, u) in enumerate(zip(old, update, strict=True)):
        new[i] = b + u * scale
    return True


class PrivacyObserver(Protocol):
    """Receives one user-level ledger row per released round."""

    def on_user_privacy(self, server_round: int, row: Mapping[str, Any]) -> None:
        """Called after a round's noisy aggregate was released."""


class UserDPSettings:
    """What every user-level wrapper needs besides Flower's own arguments.

    Parameters
    ----------
    adapter : AdapterFedAvg
        The innermost strategy (its round history says who is in the aggregate).
    accountant : Accountant
        Composes one ``(z, q)`` Gaussian release per round.
    sample_rate : float
        ``q`` for the accountant (1.0 without sampling amplification).
    delta : float
        The user-level delta.
    budget : float
        No round is released that would take epsilon above it.
    strict : bool
        Fewer replies than sampled is a :class:`PrivacyError` (else the fixed
        denominator keeps the accounting valid).
    source : RandomSource
        Noise generator.
    observer : PrivacyObserver, optional
        Gets the ledger rows.
    """

    def __init__(self, *, adapter: AdapterFedAvg, accountant: Accountant, sample_rate: float,
                 delta: float, budget: float, strict: bool, source: RandomSource,
                 observer: PrivacyObserver | None = None) -> None:
        if not 0 < sample_rate <= 1:
            raise ConfigError(f"user-level sample rate must be in (0, 1], got {sample_rate}")
        self.adapter = adapter
        self.accountant = accountant
        self.sample_rate = sample_rate
        self.delta = delta
        self.budget = budget
        self.strict = strict
        self.source = source
        self.observer = observer


class _UserLevelDP:
    """The behaviour shared by the four wrappers (put first in the MRO)."""

    # set by the Flower base classes
    strategy: Strategy
    clipping_norm: float
    noise_multiplier: float
    num_sampled_clients: int

    server_side = False
    adaptive = False
    name = ""

    def _init_user_dp(self, settings: UserDPSettings, total_noise: float) -> None:
        self.dp = settings
        self.total_noise = total_noise  # z: what the accountant composes
        self._global: dict[str, np.ndarray] = {}
        self.last_arrays: ArrayRecord | None = None
        self._sent: list[int] = []
        self._round_clip = self.clipping_norm
        self.released = 0

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (crash resume): accountant, C, inner strategy."""
        inner = getattr(self.strategy, "state_dict", None)
        return {"wrapper": self.name, "accountant": self.dp.accountant.state_dict(),
                "clipping_norm": self.clipping_norm, "released": self.released,
                "noise_source": self.dp.source.state_dict(),
                "inner": inner() if inner is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a mismatch is a ConfigError/PrivacyError)."""
        try:
            if state["wrapper"] != self.name:
                raise ConfigError(f"state of {state['wrapper']!r} cannot be loaded into "
                                  f"{self.name!r}")
            accountant, clip, released = (state["accountant"], float(state["clipping_norm"]),
                                          int(state["released"]))
            inner = state["inner"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed {self.name} state: {exc!r}") from None
        self.dp.accountant.load_state_dict(accountant)
        self.dp.source.load_state_dict(state.get("noise_source") or {})
        self.clipping_norm, self.released = clip, released
        loader = getattr(self.strategy, "load_state_dict", None)
        if loader is not None and inner is not None:
            loader(inner)

    # ------------------------------------------------------------- accounting
    def epsilon(self) -> float:
        """User-level epsilon spent so far (0 before the first release)."""
        acc = self.dp.accountant
        return acc.get_epsilon(self.dp.delta) if acc.num_steps else 0.0

    def _check_budget(self, server_round: int) -> None:
        probe = self.dp.accountant.copy()
        probe.step(noise_multiplier=self.total_noise, sample_rate=self.dp.sample_rate,
                   num_steps=1)
        after = probe.get_epsilon(self.dp.delta)
        if after > self.dp.budget:
            raise PrivacyBudgetExhausted(
                f"round {server_round} would take user-level epsilon to {after:.3f} > "
                f"budget {self.dp.budget:g} (delta {self.dp.delta:g}; spent "
                f"{self.epsilon():.3f} over {self.released} released rounds)")

    # ---------------------------------------------------------------- rounds
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Refuse a round beyond the budget; otherwise configure it through Flower's."""
        self.last_arrays = arrays  # the last released global (kept if the budget stops us)
        self._check_budget(server_round)
        self._global = record_to_payload(arrays)
        self._round_clip = self.clipping_norm
        if self.adaptive and not self.server_side:
            config[KEY_REPORT_NORM_BIT] = True  # only then does the client send its bit
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self._sent = [int(m.metadata.dst_node_id) for m in messages]
        return messages

    def _check_replies(self, server_round: int, replies: list[Message]) -> list[Message]:
        # duplicated and unsampled replies are dropped (and recorded) first
        good = [m for m in self.dp.adapter.screen_train_replies(replies) if not m.has_error()]
        got = {int(m.metadata.src_node_id) for m in good}
        missing = [n for n in self._sent if n not in got]
        if missing and self.dp.strict:
            reasons = {int(m.metadata.src_node_id): m.error.reason for m in replies
                       if m.has_error()}
            detail = "; ".join(f"node {n}: {reasons.get(n, 'no reply')}" for n in missing)
            raise PrivacyError(
                f"round {server_round}: {len(good)} of {len(self._sent)} sampled clients "
                f"replied ({detail}). Under user-level DP a missing client changes the "
                "sensitivity the noise was calibrated for, so nothing is released "
                "([user_dp] on_missing = 'error'); on_missing = 'fixed-denominator' "
                "divides by the expected count instead, which keeps the accounting valid")
        return good

    def _clip_or_verify(self, replies: list[Message]) -> tuple[list[Message], list[bool]]:
        """Server side: clip each reply's update to C. Client side: check it was.

        Returns the replies kept and each one's *clipped* bit (Flower's ``norm_bit``).
        A malformed reply, one the server cannot clip, or (client side) one whose
        update exceeds ``C`` is a :class:`PrivacyError` in strict mode, else dropped
        and recorded as rejected (one hostile client cannot end the run)."""
        kept: list[Message] = []
        bits: list[bool] = []
        for msg in replies:
            try:
                bits.append(self._clip_one(msg))
            except PayloadError as exc:
                if self.dp.strict:
                    raise PrivacyError(f"node {msg.metadata.src_node_id}: {exc}; nothing is "
                                       "released ([user_dp] on_missing = 'error')") from None
                stats = self.dp.adapter.current_stats  # recorded as the adapter records
                if stats is not None:
                    stats.rejected[int(msg.metadata.src_node_id)] = str(exc)
                continue
            kept.append(msg)
        return kept, bits

    def _clip_one(self, msg: Message) -> bool:
        if ARRAYS_KEY not in msg.content.array_records:
            if self.server_side:  # a masked/encrypted update cannot be clipped here
                raise PayloadError(
                    f"{self.name} clipping got a reply from node {msg.metadata.src_node_id} "
                    "without a plaintext update (secure aggregation?): the server cannot "
                    "clip it; use client-side clipping")
            return self._reported_bit(msg)  # secure aggregation: the update is masked
        keys = sorted(self._global)
        # Decoded against the round's spec: bounded before deserialising, and checked
        # for keys, shapes, dtypes and finite values before any arithmetic (a wrong
        # shape would otherwise broadcast against the global into a "valid" update).
        payload = read_payload(msg.content, self.dp.adapter.spec)
        if set(payload) != set(keys):
            raise PayloadError(f"reply keys {sorted(payload)} differ from the global "
                               f"payload's {keys}")
        new = [np.asarray(payload[k], dtype=np.float64) for k in keys]
        old = [np.asarray(self._global[k], dtype=np.float64) for k in keys]
        if not all(np.all(np.isfinite(a)) for a in new):
            raise PayloadError("the update has NaN or Inf values")
        if self.server_side:
            bit = flat_clip(new, old, self._round_clip)
            clipped = {k: new[i].astype(payload[k].dtype) for i, k in enumerate(keys)}
            for name, record in write_payload(clipped).items():
                msg.content[name] = record
            return bit
        norm = get_norm([a - b for a, b in zip(new, old, strict=True)])
        if norm > self._round_clip * (1 + _NORM_SLACK) + 1e-7:
            raise PayloadError(
                f"node {msg.metadata.src_node_id} sent an update of norm {norm:.4g} > "
                f"the clipping norm {self._round_clip:.4g}: its ClientApp does not clip "
                "(securefed.app.clipping_mod must run on client-side clipping)")
        return self._reported_bit(msg)

    def _reported_bit(self, msg: Message) -> bool:
        if not self.adaptive:
            return False
        metrics = msg.content.metric_records.get("metrics")
        bit = None if metrics is None else metrics.get(KEY_NORM_BIT)
        if not isinstance(bit, int | float) or bit not in (0, 1):
            raise PayloadError(f"node {msg.metadata.src_node_id}: reply lacks a 0/1 "
                               f"{KEY_NORM_BIT!r} metric (adaptive clipping)")
        return bool(bit)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check replies, clip, aggregate through the wrapped strategy, release."""
        good, bits = self._clip_or_verify(self._check_replies(server_round, list(replies)))
        arrays, metrics = self.strategy.aggregate_train(server_round, good)
        if arrays is None:
            return None, metrics
        released = self._release(server_round, arrays)
        if self.adaptive:
            # only the clients in the aggregate move C: a reply the inner strategy
            # rejected (bad weight, metrics) must not steer the next round's norm
            stats = self.dp.adapter.history[-1] if self.dp.adapter.history else None
            accepted = set(stats.accepted) if stats is not None else set()
            self._adapt([bit for msg, bit in zip(good, bits, strict=True)
                         if int(msg.metadata.src_node_id) in accepted])
        return released, metrics

    def _adapt(self, clipped_bits: list[bool]) -> None:
        """Andrew et al. 2021, Alg. 1: ``C <- C exp(-eta (b~ - gamma))`` with ``b~`` the
        noisy fraction of *unclipped* updates over the fixed denominator ``m``."""
        m = self.num_sampled_clients
        centred = sum((0.0 if c else 1.0) - 0.5 for c in clipped_bits)
        noise = float(self.dp.source.normal(1)[0]) * self.clipped_count_stddev
        unclipped = (centred + noise) / m + 0.5
        self.clipping_norm *= math.exp(
            -self.clip_norm_lr * (unclipped - self.target_clipped_quantile))

    clipped_count_stddev: float
    clip_norm_lr: float
    target_clipped_quantile: float

    def _slack(self) -> float:
        """Sensitivity a secure sum adds to ``C`` (SecAgg+ quantisation), else 0."""
        slack = getattr(self.strategy, "sensitivity_slack", None)
        value = float(slack()) if callable(slack) else 0.0
        if value > 0.01 * self._round_clip:
            log.warning("secure-aggregation quantisation adds %.3g to the clipping norm "
                        "%.3g: the noise grows to cover it; raise [secure] bits or lower "
                        "clipping_range for less noise", value, self._round_clip)
        return value

    def _release(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        stats = self.dp.adapter.history[-1] if self.dp.adapter.history else None
        k = len(stats.accepted) if stats is not None else 0
        sampled = len(stats.sampled) if stats is not None else 0
        if k < sampled and self.dp.strict:
            raise PrivacyError(
                f"round {server_round}: {k} of {sampled} sampled clients are in the "
                "aggregate; nothing is released ([user_dp] on_missing = 'error')")
        m = self.num_sampled_clients
        slack = self._slack()
        std = self.noise_multiplier * (self._round_clip + slack) / m
        mean = record_to_payload(arrays)
        out: dict[str, np.ndarray] = {}
        for key, g in self._global.items():
            base = np.asarray(g, dtype=np.float64)
            step = (np.asarray(mean[key], dtype=np.float64) - base) * (k / m)
            noise = self.dp.source.normal(int(base.size)).reshape(base.shape) * std
            out[key] = (base + step + noise).astype(g.dtype)
        self.dp.accountant.step(noise_multiplier=self.total_noise,
                                sample_rate=self.dp.sample_rate, num_steps=1)
        self.released += 1
        if self.dp.observer is not None:
            self.dp.observer.on_user_privacy(server_round, {
                "user_epsilon": self.epsilon(), "user_delta": self.dp.delta,
                "user_noise_multiplier": self.total_noise,
                "update_noise_multiplier": self.noise_multiplier,
                "user_clip_norm": self._round_clip, "user_sample_rate": self.dp.sample_rate,
                "clients_in_aggregate": k, "denominator": m, "noise_std": std,
                "quantization_slack": slack,
                "clipping": self.name})
        return payload_to_record(out)


class _Fixed(_UserLevelDP):
    """Fixed clipping norm ``C``."""

    def __init__(self, strategy: Strategy, settings: UserDPSettings, *, noise_multiplier: float,
                 clipping_norm: float, expected_clients: int) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm,  # type: ignore[call-arg]
                         expected_clients)
        self._init_user_dp(settings, noise_multiplier)


class _Adaptive(_UserLevelDP):
    """Adaptive clipping norm (Andrew et al. 2021); ``z`` split between update and count."""

    adaptive = True

    def __init__(self, strategy: Strategy, settings: UserDPSettings, *, noise_multiplier: float,
                 clipping_norm: float, expected_clients: int, target_quantile: float = 0.5,
                 clip_learning_rate: float = 0.2,
                 clipped_count_stddev: float | None = None) -> None:
        if clipped_count_stddev is None:
            clipped_count_stddev = expected_clients / 20
        if noise_multiplier > 0 and noise_multiplier >= 2 * clipped_count_stddev:
            raise ConfigError(
                f"adaptive clipping needs noise_multiplier z < 2 * clipped_count_stddev "
                f"(z = {noise_multiplier:.4g}, sigma_b = {clipped_count_stddev:.4g}; Andrew "
                "et al. 2021, Thm 1): raise [user_dp] clipped_count_stddev or use fixed "
                "clipping")
        super().__init__(strategy, noise_multiplier, expected_clients,  # type: ignore[call-arg]
                         clipping_norm, target_quantile, clip_learning_rate,
                         clipped_count_stddev)
        self._init_user_dp(settings, noise_multiplier)


class ServerSideFixedClipping(_Fixed, DifferentialPrivacyServerSideFixedClipping):
    """Server clips each update to ``C`` (plaintext aggregation only)."""

    server_side, name = True, "server-fixed"


class ClientSideFixedClipping(_Fixed, DifferentialPrivacyClientSideFixedClipping):
    """Clients clip (``clipping_mod``); works under secure aggregation."""

    name = "client-fixed"


class ServerSideAdaptiveClipping(_Adaptive, DifferentialPrivacyServerSideAdaptiveClipping):
    """Server clips to an adaptive ``C`` (plaintext aggregation only)."""

    server_side, name = True, "server-adaptive"


class ClientSideAdaptiveClipping(_Adaptive, DifferentialPrivacyClientSideAdaptiveClipping):
    """Clients clip to an adaptive ``C`` and report their bit (plaintext only)."""

    name = "client-adaptive"


#: ``[user_dp] clipping`` -> wrapper class.
USER_DP_WRAPPERS: Registry[type[Strategy]] = Registry("user-level DP clipping")
for _cls in (ServerSideFixedClipping, ClientSideFixedClipping, ServerSideAdaptiveClipping,
             ClientSideAdaptiveClipping):
    USER_DP_WRAPPERS.register(_cls.name, _cls)
