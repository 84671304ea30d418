"""Build the ``[user_dp]`` wrapper: user-level DP around the (secure) adapter strategy.

Composition, outermost first::

    ServerSide/ClientSide Fixed/Adaptive clipping   (strategies.user_dp; Flower's wrappers)
      └─ SecureAggregation | HomomorphicAggregation  ([secure] mode; optional)
           └─ AdapterFedAvg                          (uniform weights, Poisson sampling)

and on each client ``MODS = [secagg_mod, ckks_mod, clipping_mod]``: the client clips
its update before it is masked or encrypted. The noise multiplier ``z`` is given or
calibrated (:func:`securefed.privacy.calibration.calibrate_noise`) so that
``[federation] rounds`` releases with sampling rate ``q`` stay within
``target_epsilon`` (McMahan et al. 2018, arXiv:1710.06963).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from securefed.config import ExperimentConfig
from securefed.exceptions import ConfigError
from securefed.privacy.accountants import create_budget_accountant
from securefed.privacy.calibration import calibrate_noise
from securefed.privacy.noise import RandomSource, make_source
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.user_dp import USER_DP_WRAPPERS, PrivacyObserver, UserDPSettings

__all__ = ["adapter_options", "check_user_dp", "sample_rate", "user_dp_facts", "user_noise",
           "wrap_user_dp"]


def sample_rate(config: ExperimentConfig) -> float:
    """``q`` the accountant composes: ``m / N`` with Poisson sampling, else 1."""
    u = config.user_dp
    if u.sampling == "fixed":
        return 1.0
    return config.federation.clients_per_round / config.data.num_clients


def user_noise(config: ExperimentConfig) -> float:
    """The user-level noise multiplier ``z``: given, or calibrated to the target."""
    u = config.user_dp
    if u.noise_multiplier:
        return u.noise_multiplier
    return calibrate_noise(u.accountant, target_epsilon=u.target_epsilon, delta=u.delta,
                           sample_rate=sample_rate(config),
                           steps=config.federation.rounds).noise_multiplier


def adapter_options(config: ExperimentConfig) -> dict[str, Any]:
    """The ``AdapterFedAvg`` arguments ``[user_dp]`` implies (uniform weights, sampling)."""
    u = config.user_dp
    if not u.enabled:
        return {}
    poisson = u.sampling == "poisson" and sample_rate(config) < 1.0
    return {"uniform_weights": True,
            "poisson_population": config.data.num_clients if poisson else 0,
            "sampling_source": _source(config, offset=3_333)}


def _source(config: ExperimentConfig, *, offset: int) -> RandomSource:
    """ChaCha20 CSPRNG for ``randomness = "secure"``; else seeded from the experiment."""
    if config.user_dp.randomness == "secure":
        return make_source("secure")
    return make_source("seeded", config.experiment.seed + offset)


def _refuse(config: ExperimentConfig) -> None:
    """The combinations of ``[user_dp]`` and ``[secure]`` that cannot be private."""
    u = config.user_dp
    secure = config.secure.mode
    if secure != "none" and not u.client_side:
        raise ConfigError(f"[user_dp] clipping = {u.clipping!r} clips on the server, which "
                          f"sees no individual update under [secure] mode = {secure!r}; "
                          "use clipping = 'client-fixed'")
    if secure != "none" and u.adaptive:
        raise ConfigError("[user_dp] clipping = 'client-adaptive' is not available under "
                          "secure aggregation: each client's clipped bit would reach the "
                          "server in the clear; use clipping = 'client-fixed'")
    if u.delta >= 1 / config.data.num_clients:
        raise ConfigError(f"[user_dp] delta = {u.delta:g} must be below 1 / num_clients = "
                          f"{1 / config.data.num_clients:g} (a larger delta permits "
                          "releasing one user's data outright)")


def check_user_dp(config: ExperimentConfig) -> None:
    """Refuse a ``[user_dp]`` combination that cannot be private, before anything runs.

    Raises
    ------
    ConfigError
        Server-side clipping under secure aggregation (the server never sees an update),
        client-side adaptive clipping under secure aggregation (the clipped bit would
        travel in the clear), ``delta >= 1/N``, or adaptive clipping with
        ``z >= 2 sigma_b``.
    """
    if not config.user_dp.enabled:
        return
    fed = config.federation
    probe = AdapterFedAvg(clients_per_round=fed.clients_per_round,
                          min_replies=fed.required_replies, **adapter_options(config),
                          rng=np.random.default_rng(0))
    wrap_user_dp(config, probe, probe, None)


def wrap_user_dp(config: ExperimentConfig, strategy: Strategy, adapter: AdapterFedAvg,
                 observer: PrivacyObserver | None) -> Strategy:
    """``strategy`` wrapped for ``[user_dp]`` (returned as is when it is off)."""
    u = config.user_dp
    if not u.enabled:
        return strategy
    _refuse(config)  # also here: `flwr run` reaches the ServerApp without preflight
    z = user_noise(config)
    source = _source(config, offset=7_777)
    settings = UserDPSettings(
        adapter=adapter,
        accountant=create_budget_accountant(u.accountant, "[user_dp] accountant"),
        sample_rate=sample_rate(config), delta=u.delta, budget=u.budget,
        strict=u.on_missing == "error", source=source, observer=observer)
    kwargs: dict[str, Any] = {"noise_multiplier": z, "clipping_norm": u.clipping_norm,
                              "expected_clients": config.federation.clients_per_round}
    if u.adaptive:
        kwargs.update(target_quantile=u.target_quantile,
                      clip_learning_rate=u.clip_learning_rate,
                      clipped_count_stddev=u.clipped_count_stddev or None)
    cls = USER_DP_WRAPPERS.get(u.clipping)
    return cls(strategy, settings, **kwargs)  # type: ignore[call-arg]


def user_dp_facts(config: ExperimentConfig) -> dict[str, Any]:
    """What ``summary.json`` records about user-level DP."""
    u = config.user_dp
    if not u.enabled:
        return {"user_dp": "none"}
    return {"user_dp": u.clipping, "user_noise_multiplier": user_noise(config),
            "user_sample_rate": sample_rate(config), "user_delta": u.delta,
            "user_accountant": u.accountant, "user_sampling": u.sampling,
            "user_on_missing": u.on_missing}
