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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context

from securefed.config import ExperimentConfig
from securefed.exceptions import ConfigError, PrivacyBudgetExhausted
from securefed.privacy.accountants import create_budget_accountant
from securefed.privacy.base import Accountant
from securefed.privacy.calibration import calibrate_noise
from securefed.privacy.dpsgd import PrivateTrainResult, steps_per_epoch, train_private
from securefed.privacy.noise import make_source

__all__ = ["STATE_KEY", "DPRound", "check_dp_method", "load_accountant", "plan_round",
           "run_private_round"]

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
        fails on BERT's embeddings; set ``[method] freeze_embeddings = true``).
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
        raise ConfigError("[dp] with method 'full' needs [method] freeze_embeddings = true "
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
        steps=steps * config.federation.rounds).noise_multiplier
    probe = accountant.copy()
    probe.step(noise_multiplier=sigma, sample_rate=q, num_steps=steps)
    eps = probe.get_epsilon(dp.delta)
    if eps > dp.budget:
        spent = accountant.get_epsilon(dp.delta) if accountant.num_steps else 0.0
        raise PrivacyBudgetExhausted(
            f"this round would take the client to epsilon {eps:.3f} > budget {dp.budget:g} "
            f"(delta {dp.delta:g}; spent so far {spent:.3f} over {accountant.num_steps} steps)")
    return DPRound(steps, q, sigma, eps)


def run_private_round(config: ExperimentConfig, context: Context, partition: int,
                      model: Any, inputs: Any, labels: Any,
                      seed: int) -> tuple[PrivateTrainResult, dict[str, float]]:
    """Check the budget, train with DP-SGD, charge the accountant, persist it.

    Returns the training result and the ledger fields for the reply's metrics.
    """
    dp = config.dp
    accountant = load_accountant(context, config, partition)
    plan = plan_round(config, accountant, int(labels.shape[0]))
    source = make_source("secure") if dp.randomness == "secure" else make_source("seeded", seed)
    result = train_private(model, inputs, labels, lr=config.train.lr,
                           weight_decay=config.train.weight_decay,
                           noise_multiplier=plan.noise_multiplier,
                           max_grad_norm=dp.max_grad_norm,
                           expected_batch_size=config.train.batch_size, steps=plan.steps,
                           source=source, clipping=dp.clipping)
    accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                    num_steps=plan.steps)
    save_accountant(context, accountant, partition)
    ledger = {
        "dp-epsilon": accountant.get_epsilon(dp.delta),
        "dp-delta": dp.delta,
        "dp-noise-multiplier": plan.noise_multiplier,
        "dp-sample-rate": plan.sample_rate,
        "dp-steps": plan.steps,
        "dp-total-steps": accountant.num_steps,
        "dp-clip-norm": dp.max_grad_norm,
    }
    return result, ledger
