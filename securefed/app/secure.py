"""Wrap the adapter strategy for ``[secure] mode``: a registry of sum-only wrappers.

``none`` returns the inner :class:`~strategies.adapter_fedavg.AdapterFedAvg` as is;
``secagg`` wraps it in :class:`~strategies.secure_aggregation.SecureAggregation`
(SecAgg+, Bell et al. 2020, arXiv:2009.05807); ``ckks`` in
:class:`~strategies.homomorphic.HomomorphicAggregation` (CKKS, Cheon et al. 2017).
:func:`check_secure` runs every check a wrapper would make at construction, so
``securefed run`` refuses a bad combination before any process starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from securefed.app.egress import client_weight, secure_stat_names
from securefed.config import ExperimentConfig
from securefed.exceptions import ConfigError
from securefed.methods import TuningMethod
from securefed.registry import Registry
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.secure_aggregation import SecureAggregation
from strategies.sum_only import SecureStats, SumOnlyAggregation

__all__ = ["SECURE_WRAPPERS", "check_secure", "secure_facts", "wrap_strategy"]

Builder = Callable[[ExperimentConfig, AdapterFedAvg, TuningMethod], Strategy]

SECURE_WRAPPERS: Registry[Builder] = Registry("secure aggregation mode")


def _none(config: ExperimentConfig, inner: AdapterFedAvg, method: TuningMethod) -> Strategy:
    return inner


def _shared(config: ExperimentConfig, method: TuningMethod) -> dict[str, Any]:
    """The arguments both sum-only wrappers take from ``[secure]`` and the method."""
    s = config.secure
    # Under [dp] or [user_dp] every client weighs 1 (egress.client_weight): max_weight = 1
    # keeps the quantisation error of a contribution at one grid step, not max_weight.
    max_weight = 1 if client_weight(config, 2) == 1 else s.max_weight
    return {"method": method.name, "exact_under_sum": method.semantics.exact_under_sum,
            "allow_inexact": s.allow_inexact, "clipping_range": s.clipping_range,
            "max_weight": max_weight, "on_overflow": s.on_overflow,
            "stage_timeout": s.stage_timeout_s}


def _secagg(config: ExperimentConfig, inner: AdapterFedAvg, method: TuningMethod) -> Strategy:
    s = config.secure
    return SecureAggregation(inner, bits=s.bits, degree=s.degree or None,
                             threshold=s.threshold or None,
                             adversary=s.adversary,  # type: ignore[arg-type]
                             train_timeout=config.federation.round_timeout_s,
                             **_shared(config, method))


def _ckks(config: ExperimentConfig, inner: AdapterFedAvg, method: TuningMethod) -> Strategy:
    from strategies.homomorphic import HomomorphicAggregation

    if config.capture.round:
        raise ConfigError("[capture] is not available with [secure] mode = 'ckks' yet: the "
                          "server sees only ciphertexts and would capture nothing; use "
                          "mode = 'secagg' (captures the masked input) or 'none'")
    s = config.secure
    return HomomorphicAggregation(inner, key_role=s.key_role,
                                  poly_modulus_degree=s.poly_modulus_degree,
                                  coeff_mod_bit_sizes=s.coeff_bits,
                                  global_scale_bits=s.global_scale_bits,
                                  key_rotation_rounds=s.ckks_key_rotation_rounds,
                                  **_shared(config, method))


SECURE_WRAPPERS.register("none", _none)
SECURE_WRAPPERS.register("secagg", _secagg)
SECURE_WRAPPERS.register("ckks", _ckks)


def wrap_strategy(config: ExperimentConfig, inner: AdapterFedAvg,
                  method: TuningMethod) -> Strategy:
    """The strategy ``[secure] mode`` asks for, around ``inner``.

    Raises
    ------
    ConfigError
        If the method is inexact under sums without opt-in, or the wrapper's
        parameters cannot work for ``clients_per_round`` clients (overflow bound,
        neighbour graph, CKKS range).
    """
    strategy = SECURE_WRAPPERS.get(config.secure.mode)(config, inner, method)
    if isinstance(strategy, SumOnlyAggregation):  # statistics summed in the channel
        strategy.use_secure_stats(SecureStats(secure_stat_names(config),
                                              config.report.loss_bound))
    return strategy


def check_secure(config: ExperimentConfig, method: TuningMethod) -> None:
    """Every check :func:`wrap_strategy` makes, without building a model.

    Raises
    ------
    ConfigError
        As :func:`wrap_strategy`.
    """
    if not config.secure.enabled:
        return
    fed = config.federation
    probe = AdapterFedAvg(clients_per_round=fed.clients_per_round,
                          min_replies=fed.required_replies, rng=np.random.default_rng(0))
    wrap_strategy(config, probe, method)  # the constructors validate everything


def secure_facts(config: ExperimentConfig, method: TuningMethod) -> dict[str, Any]:
    """What ``summary.json`` records about secure aggregation."""
    s = config.secure
    facts: dict[str, Any] = {"secure_mode": s.mode, "payload_form": config.federation.payload_form}
    if s.enabled:
        exact = method.semantics.exact_under_sum
        facts.update(secure_clipping_range=s.clipping_range,
                     secure_exactness="exact" if exact else "inexact-allowed")
        if s.mode == "ckks":
            facts.update(ckks_key_role=s.key_role, ckks_flooding_bits=s.ckks_flooding_bits,
                         ckks_key_rotation_rounds=s.ckks_key_rotation_rounds)
        if s.mode == "secagg":
            facts["secagg_adversary"] = s.adversary
    return facts
