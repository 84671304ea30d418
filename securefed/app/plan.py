"""What a run will do, computed before it starts: :class:`RunPlan` and its parts.

:func:`securefed.app.check.check_config` validates a config and returns a
:class:`RunPlan`; ``securefed check`` and ``securefed run --dry-run`` print it. Every
number comes from the code the run itself uses, never from a second formula:

* the payload from the run's own tuned model (:func:`securefed.app.runtime.tuned_model`:
  the method applied to the backbone, as every client builds it);
* under ``[secure] mode = "secagg"`` the SecAgg+ sizing of
  :func:`securefed.secagg.plan.plan` for ``clients_per_round`` clients, with the
  degree ``k`` and threshold ``t`` the server will propose, and the recovery-failure
  upper bound at the dropout rate the round tolerates,
  ``(clients_per_round - required replies) / clients_per_round``;
* under ``[secure] mode = "ckks"`` the size of one encrypted update (a vector of zeros
  of the update's length encrypted under fresh keys of the configured parameters;
  TenSEAL compresses, so real updates differ by well under 1 %);
* under ``[dp]`` the DP-SGD schedule of the smallest and the largest client as each
  will plan it
  (:func:`securefed.app.private_training.plan_round`: steps, sample rate, calibrated or
  given sigma) and the epsilon after ``rounds`` rounds with every statistics release
  (:func:`securefed.privacy.calibration.epsilon_for`), for a client that trains in
  every round (the case the calibration covers), and the first round a given sigma
  would make a client refuse at its budget;
* under ``[user_dp]`` the server's noise multiplier (given or calibrated,
  :func:`securefed.app.central_dp.user_noise`) and the user-level epsilon after
  ``rounds`` releases at sample rate ``q``.

A plan that cannot hold (a target no sigma reaches, a budget that refuses the first
round) is a :class:`~securefed.exceptions.ConfigError` naming the value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from securefed.config import ExperimentConfig
from securefed.exceptions import ConfigError, PrivacyBudgetExhausted
from securefed.registry import Registry

if TYPE_CHECKING:
    from securefed.privacy.base import Accountant, HistoryEntry

__all__ = ["NOISE_TO_SIGNAL_HINT", "SECURE_PLANS", "RunPlan", "noise_to_signal",
           "payload_plan", "sample_dp_plan", "secure_plan",
           "user_dp_plan"]


@dataclass(frozen=True)
class RunPlan:
    """A checked run, before it starts (see the module docstring).

    Bytes are per client per round: ``bytes_up`` what one sampled client sends (the
    method's payload, the SecAgg+ stages, or the CKKS ciphertext), ``bytes_down`` the
    global payload it receives. ``train_sizes`` / ``val_sizes`` are each client's
    local examples by partition id. ``secure``, ``dp`` and ``user_dp`` hold the mode's
    numbers (``{"mode": "none"}`` / ``None`` when off).
    """

    engine: str
    method: str
    backbone: str
    dataset: str
    modality: str
    num_clients: int
    clients_per_round: int
    required_replies: int
    evaluate_clients: int
    rounds: int
    client_cpus: int
    client_gpus: float
    parallel_clients: int | None
    train_examples: int
    test_examples: int
    train_sizes: tuple[int, ...]
    val_sizes: tuple[int, ...]
    trainable_params: int
    payload_values: int
    payload_bytes: int
    bytes_up: int
    bytes_down: int
    secure: dict[str, Any] = field(default_factory=dict)
    dp: dict[str, Any] | None = None
    user_dp: dict[str, Any] | None = None
    seeds: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        out = dataclasses.asdict(self)
        out["train_sizes"] = list(self.train_sizes)
        out["val_sizes"] = list(self.val_sizes)
        return out


def payload_plan(config: ExperimentConfig) -> dict[str, int]:
    """Trainable parameters and the payload a client sends, from the run's own model.

    Returns
    -------
    dict
        ``trainable_params`` (parameters with ``requires_grad``), ``payload_values``
        and ``payload_bytes`` (what :meth:`TuningMethod.payload` returns: the tensors
        that travel each round, in both directions).
    """
    from securefed.app.runtime import tuned_model

    tm = tuned_model(config)
    payload = tm.payload()
    return {
        "trainable_params": int(sum(p.numel() for p in tm.model.parameters()
                                    if p.requires_grad)),
        "payload_values": int(sum(v.size for v in payload.values())),
        "payload_bytes": int(sum(v.nbytes for v in payload.values())),
    }


def _update_length(config: ExperimentConfig, payload_values: int) -> int:
    """Values one client masks or encrypts: the update, the statistics summed in the
    channel (:func:`securefed.app.egress.secure_stat_names`) and the weight field."""
    from securefed.app.egress import secure_stat_names

    return payload_values + len(secure_stat_names(config)) + 1


SecurePlanner = Callable[[ExperimentConfig, int], dict[str, Any]]
"""``(config, payload values) -> {"mode": ..., "bytes_up": ..., ...}``."""

SECURE_PLANS: Registry[SecurePlanner] = Registry("secure aggregation mode")


def _plain(config: ExperimentConfig, payload_values: int) -> dict[str, Any]:
    return {"mode": "none"}


def _secagg(config: ExperimentConfig, payload_values: int) -> dict[str, Any]:
    from securefed.secagg.graph import default_degree
    from securefed.secagg.plan import plan

    s, fed = config.secure, config.federation
    n = fed.clients_per_round
    tolerated = n - fed.required_replies  # clients a round may lose and still count
    p = plan(n, _update_length(config, payload_values), tolerated / n,  # failure bound at it
             clipping_range=s.clipping_range, bits=s.bits,
             degree=s.degree or default_degree(n), threshold=s.threshold or None)
    return {"mode": "secagg", "adversary": s.adversary, "clients": p.num_clients,
            "degree": p.degree, "threshold": p.threshold, "bits": p.bits,
            "masked_values": p.num_params, "stage_bytes": dict(p.stage_bytes),
            "bytes_up": p.bytes_per_client, "dropout_rate": p.dropout_rate,
            "failure_probability": p.failure_probability,
            "mean_error_bound": p.mean_error_bound}


def _ckks(config: ExperimentConfig, payload_values: int) -> dict[str, Any]:
    import numpy as np

    from securefed.he.ckks import encrypt_vector
    from securefed.he.keys import CKKSConfig, generate_keys

    s = config.secure
    ckks = CKKSConfig(poly_modulus_degree=s.poly_modulus_degree,
                      coeff_mod_bit_sizes=s.coeff_bits,
                      global_scale_bits=s.global_scale_bits, key_role=s.key_role)
    length = _update_length(config, payload_values)
    keys = generate_keys(ckks)
    size = len(encrypt_vector(keys.client_context, np.zeros(length)))
    return {"mode": "ckks", "key_role": s.key_role, "encrypted_values": length,
            "ciphertexts": math.ceil(length / ckks.slot_count), "bytes_up": size,
            "expansion": size / (4 * length)}


SECURE_PLANS.register("none", _plain)
SECURE_PLANS.register("secagg", _secagg)
SECURE_PLANS.register("ckks", _ckks)


def secure_plan(config: ExperimentConfig, payload_values: int) -> dict[str, Any]:
    """The ``[secure]`` mode's numbers (:data:`SECURE_PLANS`)."""
    return SECURE_PLANS.get(config.secure.mode)(config, payload_values)


def _refused_round(accountant: Accountant, steps: Sequence[HistoryEntry], delta: float,
                   budget: float, rounds: int) -> int | None:
    """The first round whose ``steps`` (composed after every earlier round's) would take
    ``accountant`` past ``budget``: the round the budget check refuses; ``None`` if all
    ``rounds`` fit."""
    for r in range(1, rounds + 1):
        for sigma, q, n in steps:
            accountant.step(noise_multiplier=sigma, sample_rate=q, num_steps=n)
        if accountant.get_epsilon(delta) > budget:
            return r
    return None


def _client_schedule(config: ExperimentConfig, examples: int) -> dict[str, Any]:
    """One client's DP-SGD schedule and its epsilon after every round (ConfigError)."""
    from securefed.app.private_training import plan_round, stats_releases
    from securefed.privacy.accountants import create_budget_accountant
    from securefed.privacy.calibration import epsilon_for

    dp, rounds = config.dp, config.federation.rounds
    try:
        step = plan_round(config, create_budget_accountant(dp.accountant, "[dp] accountant"),
                          examples)
    except PrivacyBudgetExhausted as exc:
        raise ConfigError(f"[dp] budget {dp.budget:g} refuses round 1 of a client with "
                          f"{examples} train examples ({exc}), so nothing would train; raise "
                          "[dp] noise_multiplier or budget_epsilon") from None
    except ConfigError as exc:
        raise ConfigError(f"[dp] target_epsilon = {dp.target_epsilon:g} cannot be met by a "
                          f"client with {examples} train examples over {rounds} rounds "
                          f"({exc}); raise [dp] target_epsilon or delta, or lower "
                          "[federation] rounds or [train] local_epochs") from None
    extra = stats_releases(config)
    eps = epsilon_for(dp.accountant, noise_multiplier=step.noise_multiplier,
                      sample_rate=step.sample_rate, steps=step.steps * rounds,
                      delta=dp.delta, extra=extra)
    refused = None
    if eps > dp.budget:  # a given sigma: the client stops at its budget within the run
        per_round = [(step.noise_multiplier, step.sample_rate, step.steps),
                     *((s, q, n // rounds) for s, q, n in extra)]
        refused = _refused_round(create_budget_accountant(dp.accountant), per_round,
                                 dp.delta, dp.budget, rounds)
    return {"train_examples": examples, "steps_per_round": step.steps,
            "sample_rate": step.sample_rate, "noise_multiplier": step.noise_multiplier,
            "epsilon": eps, "refused_round": refused}


#: Noise-to-signal ratio above which DP-SGD is expected to learn little (see
#: :func:`noise_to_signal`); ``securefed check`` prints a hint above it.
NOISE_TO_SIGNAL_HINT = 5.0


def noise_to_signal(noise_multiplier: float, trainable: int, batch: float) -> float:
    """Per-coordinate noise of a DP-SGD step over its per-coordinate clipped signal.

    The noised mean gradient is ``(sum_i clip(g_i) + N(0, sigma^2 C^2 I_d)) / B``
    (Abadi et al. 2016, Algorithm 1). With every example's gradient clipped to norm
    ``C`` and spread over ``d`` coordinates, a coordinate's signal is at most about
    ``C / sqrt(d)`` while its noise has standard deviation ``sigma C / B``, so the ratio
    is ``sigma sqrt(d) / B``: the noise grows with the square root of the trainable
    parameters, the signal does not (the dimension dependence of DP-SGD's utility,
    Bassily, Smith and Thakurta 2014). Adam-type optimisers normalise each coordinate,
    so above a few units every step is mostly noise.
    """
    return noise_multiplier * math.sqrt(max(trainable, 1)) / max(batch, 1e-12)


def sample_dp_plan(config: ExperimentConfig, train_sizes: Sequence[int],
                   trainable: int = 0) -> dict[str, Any] | None:
    """DP-SGD sigma and epsilon after ``rounds`` rounds of the smallest and the largest
    client (``None`` without ``[dp]``), with each one's :func:`noise_to_signal` for
    ``trainable`` parameters (0: not computed).

    Every client calibrates its own sigma from its own example count (a calibration
    takes seconds), so the plan computes the two ends of the range: the client with
    the fewest train examples (the largest sample rate; usually the most noise and the
    hardest target) and the one with the most. Each client's own sigma and epsilon are
    recorded in the run's ``privacy.jsonl``.

    Raises
    ------
    ConfigError
        If ``target_epsilon`` cannot be reached for either client, or the budget
        refuses its first round. A budget that stops clients later in the run is not
        an error (the run then ends ``"stopped"`` with the last global adapter):
        ``first_refused_round`` names the earliest round one of them would refuse.
    """
    dp = config.dp
    if not dp.enabled:
        return None
    ends = sorted({min(range(len(train_sizes)), key=lambda i: train_sizes[i]),
                   max(range(len(train_sizes)), key=lambda i: train_sizes[i])},
                  key=lambda i: train_sizes[i])
    clients = [{"partition_id": i, **_client_schedule(config, train_sizes[i])} for i in ends]
    for c in clients:
        batch = c["sample_rate"] * c["train_examples"]  # expected Poisson batch
        c["noise_to_signal"] = (noise_to_signal(c["noise_multiplier"], trainable, batch)
                                if trainable else None)
    sigmas = [c["noise_multiplier"] for c in clients]
    refused = [c["refused_round"] for c in clients if c["refused_round"] is not None]
    return {"level": "sample", "accountant": dp.accountant, "delta": dp.delta,
            "target_epsilon": dp.target_epsilon, "budget_epsilon": dp.budget,
            "calibrated": not dp.noise_multiplier, "max_grad_norm": dp.max_grad_norm,
            "noise_multiplier_min": min(sigmas), "noise_multiplier_max": max(sigmas),
            "epsilon_max": max(c["epsilon"] for c in clients),
            "first_refused_round": min(refused, default=None), "clients": clients,
            "noise_to_signal_max": max((c["noise_to_signal"] or 0.0 for c in clients),
                                       default=0.0) or None}


def user_dp_plan(config: ExperimentConfig) -> dict[str, Any] | None:
    """The user-level noise multiplier and epsilon after ``rounds`` releases (``None``
    without ``[user_dp]``).

    Raises
    ------
    ConfigError
        If ``target_epsilon`` cannot be reached, or the budget refuses the first
        release. A budget reached later stops the run there (``first_refused_round``).
    """
    from securefed.app.central_dp import sample_rate, user_noise
    from securefed.privacy.accountants import create_budget_accountant
    from securefed.privacy.calibration import epsilon_for

    u, rounds = config.user_dp, config.federation.rounds
    if not u.enabled:
        return None
    q = sample_rate(config)
    try:
        z = user_noise(config)
    except ConfigError as exc:
        raise ConfigError(f"[user_dp] target_epsilon = {u.target_epsilon:g} cannot be met "
                          f"over {rounds} rounds at sample rate {q:g}: {exc}; raise "
                          "target_epsilon or delta, or lower [federation] rounds") from None
    eps = epsilon_for(u.accountant, noise_multiplier=z, sample_rate=q, steps=rounds,
                      delta=u.delta)
    refused = None
    if eps > u.budget:
        refused = _refused_round(create_budget_accountant(u.accountant), [(z, q, 1)],
                                 u.delta, u.budget, rounds)
        if refused == 1:
            raise ConfigError(f"[user_dp] budget {u.budget:g} refuses round 1 (noise_multiplier "
                              f"{z:g}, q = {q:g}, delta {u.delta:g}), so nothing would be "
                              "released; raise [user_dp] noise_multiplier or budget_epsilon")
    return {"level": "user", "clipping": u.clipping, "accountant": u.accountant,
            "delta": u.delta, "target_epsilon": u.target_epsilon, "budget_epsilon": u.budget,
            "calibrated": not u.noise_multiplier, "noise_multiplier": z, "sample_rate": q,
            "sampling": u.sampling, "clipping_norm": u.clipping_norm, "epsilon": eps,
            "first_refused_round": refused}
