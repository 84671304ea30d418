"""A client's DP-SGD round: its persistent accountant, its hard budget, its ledger row.

Each client owns one accountant (``[dp] accountant``) that composes every DP-SGD step it
ever took, across rounds and across ClientApp processes: its state lives in the node's
``context.state`` (a SuperNode keeps it for the run; the simulation engine keeps it per
node), and, when the node config names a ``state-dir``, also in
``<state-dir>/privacy-<partition>.json`` so that it survives a SuperNode restart.

Before training, the client charges a **copy** of its accountant with the steps it is
about to take; if the resulting epsilon exceeds ``[dp] budget_epsilon`` it refuses with
:class:`~securefed.exceptions.PrivacyBudgetExhausted` and trains nothing. The noise
multiplier is either given (``[dp] noise_multiplier``) or calibrated once so that
``[federation] rounds`` rounds of local steps stay within ``target_epsilon``
(:func:`securefed.privacy.calibration.calibrate_noise`; Abadi et al. 2016,
arXiv:1607.00133, with the accountants of Mironov 2017 / Gopi et al. 2021 / Dong et
al. 2019 / dp_accounting's PLD; the GDP approximation is refused).

With ``[report] client_stats = "noised"`` the same accountant also pays for the
client's loss and accuracy: one Gaussian release after each training round and one
per federated evaluation (:mod:`securefed.privacy.stats`). They count in the budget
check before training, and the calibration of sigma reserves room for ``rounds``
releases of each, so the whole run stays within ``target_epsilon``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context

from securefed.config import ExperimentConfig
from securefed.exceptions import ConfigError, PrivacyBudgetExhausted
from securefed.privacy.accountants import create_budget_accountant
from securefed.privacy.base import Accountant
from securefed.privacy.calibration import calibrate_noise
from securefed.privacy.dpsgd import PrivateTrainResult, steps_per_epoch, train_private
from securefed.privacy.noise import RandomSource, make_source
from securefed.privacy.stats import noise_stats, stats_step

__all__ = ["STATE_KEY", "DPRound", "check_dp_method", "load_accountant", "plan_round",
           "release_eval_stats", "run_private_round", "stats_releases"]

#: (method, modality) pairs Opacus's per-sample gradients cannot handle (see
#: ``tests/methods/test_opacus.py``): PEFT's (IA)^3 vectors and PEFT's text prompt encoder.
DP_INCOMPATIBLE = {("ia3", "text"), ("ia3", "image"), ("prompt", "text")}

STATE_KEY = "securefed.privacy"


@dataclass(frozen=True)
class DPRound:
    """What one client's DP-SGD round will take (``plan_round``)."""

    steps: int
    sample_rate: float
    noise_multiplier: float
    epsilon_after: float


def check_dp_method(config: ExperimentConfig, modality: str) -> None:
    """Refuse DP-SGD for a method Opacus cannot privatise, before anything starts.

    Raises
    ------
    ConfigError
        For ``ia3`` and text ``prompt``, or ``full`` without frozen embeddings (Opacus
        fails on BERT's embeddings; set ``[method.full] freeze_embeddings = true``).
    """
    if not config.dp.enabled:
        return
    name = config.method.name
    if (name, modality) in DP_INCOMPATIBLE:
        raise ConfigError(f"[dp] mode = 'sample' is not available for method {name!r} on "
                          f"{modality} backbones: Opacus computes no per-sample gradients "
                          "for it. Use lora, ffa-lora, federa, bitfit, head, adapter, prefix, "
                          "prompt (images) or full with freeze_embeddings = true")
    if name == "full" and not config.method.params.get("freeze_embeddings", False):
        raise ConfigError("[dp] with method 'full' needs [method.full] freeze_embeddings = true "
                          "(Opacus fails on the embedding layers)")


def _state_file(context: Context, partition: int) -> Path | None:
    directory = context.node_config.get("state-dir")
    if not isinstance(directory, str) or not directory:
        return None
    return Path(directory) / f"privacy-{partition}.json"


def load_accountant(context: Context, config: ExperimentConfig, partition: int) -> Accountant:
    """This client's accountant: from ``context.state``, else its state file, else new.

    Raises
    ------
    PrivacyError
        If the stored state belongs to another accountant (never silently reset).
    ConfigError
        If the stored state is malformed.
    """
    accountant = create_budget_accountant(config.dp.accountant, "[dp] accountant")
    record = context.state.config_records.get(STATE_KEY)
    text = record.get("accountant") if record is not None else None
    path = _state_file(context, partition)
    if not isinstance(text, str) and path is not None and path.is_file():
        text = path.read_text(encoding="utf-8")
    if isinstance(text, str):
        try:
            accountant.load_state_dict(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"stored privacy state of client {partition} cannot be "
                              f"loaded into a {config.dp.accountant!r} accountant: {exc}") from None
    return accountant


def save_accountant(context: Context, accountant: Accountant, partition: int) -> None:
    """Persist the accountant in ``context.state`` and, if configured, atomically on disk."""
    text = json.dumps(accountant.state_dict())
    context.state.config_records[STATE_KEY] = ConfigRecord({"accountant": text})
    path = _state_file(context, partition)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def noised_stats_on(config: ExperimentConfig) -> bool:
    """Whether this run releases noised client statistics (``client_stats = "noised"``)."""
    from securefed.app.egress import resolve_client_stats

    return config.dp.enabled and resolve_client_stats(config) == "noised"


def stats_releases(config: ExperimentConfig) -> list[tuple[float, float, int]]:
    """Accountant entries reserved for a whole run's statistics releases (calibration).

    One release after each training round, and one per federated evaluation round
    when ``evaluate_clients > 0``; none unless ``client_stats = "noised"``.
    """
    if not noised_stats_on(config):
        return []
    per_round = 1 + (1 if config.federation.evaluate_clients else 0)
    sigma, q, _ = stats_step(config.report.stats_noise_multiplier)
    return [(sigma, q, per_round * config.federation.rounds)]


def _check_budget(config: ExperimentConfig, accountant: Accountant, probe: Accountant) -> float:
    dp = config.dp
    eps = probe.get_epsilon(dp.delta)
    if eps > dp.budget:
        spent = accountant.get_epsilon(dp.delta) if accountant.num_steps else 0.0
        raise PrivacyBudgetExhausted(
            f"this release would take the client to epsilon {eps:.3f} > budget "
            f"{dp.budget:g} (delta {dp.delta:g}; spent so far {spent:.3f} over "
            f"{accountant.num_steps} steps)")
    return eps


def plan_round(config: ExperimentConfig, accountant: Accountant, num_examples: int) -> DPRound:
    """Steps, sample rate and sigma of this round, and the epsilon it would leave.

    Raises
    ------
    PrivacyBudgetExhausted
        If the epsilon after this round would exceed the client's budget.
    """
    dp, train = config.dp, config.train
    steps = train.local_epochs * steps_per_epoch(num_examples, train.batch_size)
    if train.max_steps:
        steps = min(steps, train.max_steps)
    q = min(1.0, train.batch_size / num_examples)
    sigma = dp.noise_multiplier or calibrate_noise(
        dp.accountant, target_epsilon=dp.target_epsilon, delta=dp.delta, sample_rate=q,
        steps=steps * config.federation.rounds, extra=stats_releases(config)).noise_multiplier
    probe = accountant.copy()
    probe.step(noise_multiplier=sigma, sample_rate=q, num_steps=steps)
    if noised_stats_on(config):  # the train statistics released after this round
        s_sigma, s_q, s_n = stats_step(config.report.stats_noise_multiplier)
        probe.step(noise_multiplier=s_sigma, sample_rate=s_q, num_steps=s_n)
    return DPRound(steps, q, sigma, _check_budget(config, accountant, probe))


def _source(config: ExperimentConfig, seed: int) -> RandomSource:
    return (make_source("secure") if config.dp.randomness == "secure"
            else make_source("seeded", seed))


def _release(config: ExperimentConfig, accountant: Accountant, sums: np.ndarray,
             seed: int) -> tuple[float, float]:
    """Charge one statistics release to ``accountant``; the noised (loss, accuracy)."""
    sigma, q, n = stats_step(config.report.stats_noise_multiplier)
    accountant.step(noise_multiplier=sigma, sample_rate=q, num_steps=n)
    out = noise_stats(sums, noise_multiplier=sigma, loss_bound=config.report.loss_bound,
                      source=_source(config, seed + 104_729))
    return out.loss, out.accuracy


def run_private_round(config: ExperimentConfig, context: Context, partition: int,
                      model: Any, inputs: Any, labels: Any, seed: int,
                      stats: Callable[[], np.ndarray] | None = None,
                      ) -> tuple[PrivateTrainResult, dict[str, float]]:
    """Check the budget, train with DP-SGD, charge the accountant, persist it.

    Returns the training result and the fields for the reply's metrics: the ledger,
    and with ``client_stats = "noised"`` the noised ``train-loss`` / ``train-accuracy``
    of the bounded sums ``stats()`` computes on the trained model.
    """
    dp = config.dp
    accountant = load_accountant(context, config, partition)
    plan = plan_round(config, accountant, int(labels.shape[0]))
    source = _source(config, seed)
    result = train_private(model, inputs, labels, lr=config.train.lr,
                           weight_decay=config.train.weight_decay,
                           noise_multiplier=plan.noise_multiplier,
                           max_grad_norm=dp.max_grad_norm,
                           expected_batch_size=config.train.batch_size, steps=plan.steps,
                           source=source, clipping=dp.clipping)
    accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                    num_steps=plan.steps)
    released: dict[str, float] = {}
    if noised_stats_on(config) and stats is not None:
        loss, accuracy = _release(config, accountant, stats(), seed)
        released = {"train-loss": loss, "train-accuracy": accuracy}
    save_accountant(context, accountant, partition)
    ledger = {**released,
        "dp-epsilon": accountant.get_epsilon(dp.delta),
        "dp-delta": dp.delta,
        "dp-noise-multiplier": plan.noise_multiplier,
        "dp-sample-rate": plan.sample_rate,
        "dp-steps": plan.steps,
        "dp-total-steps": accountant.num_steps,
        "dp-clip-norm": dp.max_grad_norm,
    }
    return result, ledger


def release_eval_stats(config: ExperimentConfig, context: Context, partition: int,
                       sums: np.ndarray, seed: int) -> dict[str, float]:
    """Noised ``eval-loss`` / ``eval-accuracy`` of a client's validation split.

    Checks the budget with the release included, charges the client's accountant and
    persists it (the validation examples are the client's private data as well).

    Raises
    ------
    PrivacyBudgetExhausted
        If the release would exceed the budget (nothing is released or charged).
    """
    accountant = load_accountant(context, config, partition)
    probe = accountant.copy()
    sigma, q, n = stats_step(config.report.stats_noise_multiplier)
    probe.step(noise_multiplier=sigma, sample_rate=q, num_steps=n)
    _check_budget(config, accountant, probe)
    loss, accuracy = _release(config, accountant, sums, seed)
    save_accountant(context, accountant, partition)
    return {"eval-loss": loss, "eval-accuracy": accuracy}
