"""Every check a run needs, before any Flower process starts; the run's plan.

:func:`check_config` is what ``securefed check``, ``securefed run --dry-run`` and every
``securefed run`` (through :func:`securefed.app.launcher.preflight`) call. It fails
with one :class:`~securefed.exceptions.ConfigError` line naming the value and what
would be valid, in seconds and without loading model weights beyond the run's own
adapter (no Flower, no Ray, no training), and otherwise returns a
:class:`~securefed.app.plan.RunPlan`. In order:

1. **Resources** (simulation engine only): ``[resources] client_cpus`` no more than
   the CPUs Ray will see (else Ray's actor pool is empty), ``client_gpus > 0`` only
   with that many CUDA devices visible to torch. (``client_cpus >= 1`` and the
   replies a round needs against ``clients_per_round`` and ``num_clients`` are
   checked when the config is built.)
2. **Replies under Poisson sampling**: under ``[user_dp] sampling = "poisson"`` a
   round draws ``Binomial(num_clients, q)`` clients; a run whose probability of
   drawing fewer than a round needs, in some round, exceeds :data:`MAX_SHORTFALL`
   is refused.
3. **User-level DP**: the noise multiplier for ``target_epsilon`` exists
   (:func:`~securefed.app.plan.user_dp_plan`).
4. **Plug-ins**: the tuning method and its parameters, the secure-aggregation
   wrapper against the method and ``clients_per_round`` (overflow, ``k``, ``t``),
   ``[user_dp]`` against ``[secure]``, the partitioner, the backbone (offline
   aliases), DP-SGD against the method, the dataset; then the SecAgg+ setup against
   the floors the simulated nodes keep (at least 3 clients a round, ``k >= 2``,
   ``t >= 2``, ``bits >= 16``).
5. **Modality**: a text backbone needs a text dataset, an image backbone an image one.
6. **Partitions**: the real partitioning (flwr-datasets, the run's seed) of the train
   split after ``test_fraction`` and ``max_train`` gives each of ``num_clients``
   clients at least ``min_partition_size`` examples and at least one train example
   after ``val_fraction``.
7. **Plan**: payload sizes, SecAgg+/CKKS sizing and the DP-SGD schedule
   (:mod:`securefed.app.plan`), which refuses a target no sigma reaches and a budget
   that refuses the first round.

The plan :func:`check_config` returns is memoised per config and engine (the resource
check still runs every time), so the launcher's own call after the CLI's costs nothing.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from securefed.app.plan import (
    RunPlan,
    payload_plan,
    sample_dp_plan,
    secure_plan,
    user_dp_plan,
)
from securefed.config import ExperimentConfig
from securefed.exceptions import ConfigError, SecurefedError

if TYPE_CHECKING:
    from securefed.data import ClassificationData

__all__ = ["ENGINES", "MAX_SHORTFALL", "available_cpus", "check_config", "partition_sizes"]

ENGINES = ("simulation", "inprocess")
"""Where a run executes: Flower's simulation engine, or the in-process grid."""

MAX_SHORTFALL = 0.1
"""Largest accepted probability that a Poisson-sampled run draws, in some round, fewer
clients than a round needs (such a round ends the run)."""

_PLANS: dict[str, RunPlan] = {}


def available_cpus() -> int:
    """CPUs Ray will see on this machine (its own count, cgroup limits included), or
    :func:`os.cpu_count` where Ray cannot say."""
    try:
        from ray._private.utils import get_num_cpus

        return int(get_num_cpus())
    except Exception:  # private API: fall back to the OS count
        return os.cpu_count() or 1


def _check_resources(config: ExperimentConfig, engine: str) -> int | None:
    """Ray's resources against this machine; the clients that can run at once.

    The GPU request holds on both engines (a client with ``client_gpus > 0`` trains on
    CUDA, :mod:`securefed.app.local`); the CPU count only concerns Ray.
    """
    r = config.resources
    if r.client_gpus > 0:
        import torch  # only here: a GPU request needs CUDA

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if r.client_gpus > gpus:
            raise ConfigError(f"[resources] client_gpus = {r.client_gpus:g} (--num-gpus) "
                              f"needs CUDA devices, and torch sees {gpus} here; use 0"
                              + (f"..{gpus}" if gpus else " (CPU-only clients)"))
        if config.dp.enabled:
            raise ConfigError(f"[resources] client_gpus = {r.client_gpus:g} with [dp] mode = "
                              f"{config.dp.mode!r}: DP-SGD (Opacus) runs on CPU clients only "
                              "for now; use client_gpus = 0")
    if engine != "simulation":
        return None
    cpus = available_cpus()
    if r.client_cpus > cpus:
        raise ConfigError(f"[resources] client_cpus = {r.client_cpus} (--num-cpus) exceeds "
                          f"the {cpus} CPUs of this machine: Ray could start no client; use "
                          f"1..{cpus}")
    return cpus // r.client_cpus


def _check_plugins(config: ExperimentConfig) -> tuple[str, ClassificationData]:
    """Method, secure wrapper, user-level DP, partitioner, backbone, DP-SGD, dataset.

    Returns the backbone's modality and the dataset. ``check_user_dp`` runs after
    :func:`~securefed.app.plan.user_dp_plan` (see :func:`check_config`), so that an
    unreachable user-level target is named as such.
    """
    from securefed.app.central_dp import check_user_dp
    from securefed.app.runtime import build_method, dataset_for
    from securefed.app.secure import check_secure
    from securefed.data import PARTITIONERS
    from securefed.models import resolve_backbone

    method = build_method(config)
    try:
        check_secure(config, method)
    except ConfigError as exc:
        raise ConfigError(f"[secure] mode = {config.secure.mode!r} with "
                          f"{config.federation.clients_per_round} clients per round: {exc}"
                          ) from None
    check_user_dp(config)
    PARTITIONERS.get(config.data.partitioner)
    modality = resolve_backbone(config.model.backbone).architecture.modality
    if config.dp.enabled:
        from securefed.app.private_training import check_dp_method

        check_dp_method(config, modality)
    return modality, dataset_for(config.data, config.experiment.seed)


def _check_modality(config: ExperimentConfig, modality: str, data: ClassificationData) -> None:
    if modality != data.modality:
        a = {"text": "a text", "image": "an image"}
        raise ConfigError(
            f"[model] backbone = {config.model.backbone!r} is {a[modality]} backbone, but "
            f"[data] dataset = {config.data.dataset!r} holds {data.modality}s; use "
            f"{a[data.modality]} backbone (`securefed backbones`) or {a[modality]} dataset "
            "(`securefed datasets`)")


def partition_sizes(config: ExperimentConfig,
                    data: ClassificationData) -> tuple[list[int], list[int]]:
    """Each client's (train, validation) example counts, by partition id.

    The partitioning is the run's own (:func:`securefed.data.partition_indices` with
    :func:`securefed.app.runtime.partition_spec`); the validation share is split off as
    each client does (:func:`securefed.app.runtime.client_data`).

    Raises
    ------
    ConfigError
        If the train split cannot be partitioned that way, or a client would get fewer
        than ``min_partition_size`` examples or no train example.
    """
    from securefed.app.runtime import partition_spec
    from securefed.data import partition_indices

    d = config.data
    n = len(data.train)
    where = (f"the {d.dataset} train split has {n} examples (test_fraction {d.test_fraction:g}"
             f"{f', max_train {d.max_train}' if d.max_train else ''})")
    most = n // max(d.min_partition_size, 1)
    fix = (f"use num_clients <= {most} (min_partition_size = {d.min_partition_size})"
           if d.num_clients > most else
           "use fewer clients, a larger [data] alpha or a smaller min_partition_size")
    try:
        parts = partition_indices(data.train, partition_spec(d, config.experiment.seed))
    except ConfigError as exc:
        reason = " ".join(str(exc).split(": ", 1)[-1].split())
        raise ConfigError(f"[data] num_clients = {d.num_clients} cannot be partitioned "
                          f"({d.partitioner}): {where}; {fix} ({reason})") from None
    sizes = [len(p) for p in parts]
    # as securefed.app.runtime._client_data splits each partition
    val = [round(s * d.val_fraction) if s > 1 else 0 for s in sizes]
    train = [s - v for s, v in zip(sizes, val, strict=True)]
    smallest = min(range(len(sizes)), key=lambda i: (train[i], sizes[i]))
    if sizes[smallest] < d.min_partition_size or train[smallest] < 1:
        raise ConfigError(
            f"[data] num_clients = {d.num_clients} leaves client {smallest} with "
            f"{sizes[smallest]} examples ({train[smallest]} to train after val_fraction "
            f"{d.val_fraction:g}); {where}, and each client needs at least "
            f"max(min_partition_size = {d.min_partition_size}, 1) train examples: "
            f"{fix}, or a smaller val_fraction")
    return train, val


def _binom_below(n: int, q: float, m: int) -> float:
    """``P[Binomial(n, q) < m]``."""
    from scipy.stats import binom

    return float(binom.cdf(m - 1, n, q)) if m > 0 else 0.0


def _check_secagg_floors(config: ExperimentConfig) -> None:
    """The SecAgg+ setup the server will propose against the nodes' default floors."""
    fed, s = config.federation, config.secure
    if s.mode != "secagg":
        return
    from securefed.secagg.floors import SecAggFloors
    from securefed.secagg.messages import make_config

    floors = SecAggFloors()  # what simulated and in-process nodes keep
    proposal = make_config(fed.clients_per_round, 1, s.clipping_range, s.bits,
                           degree=s.degree or None, threshold=s.threshold or None)
    try:
        floors.check(proposal)
    except SecurefedError as exc:
        raise ConfigError(
            f"[secure] mode = 'secagg' with [federation] clients_per_round = "
            f"{fed.clients_per_round}, bits = {s.bits}: every node would refuse the setup "
            f"({exc}); SecAgg+ nodes need >= {floors.min_clients} clients a round, k >= "
            f"{floors.min_degree}, t >= {floors.min_threshold}, bits >= {floors.min_bits}"
        ) from None


def _check_poisson(config: ExperimentConfig) -> None:
    """Under Poisson client sampling, a run must rarely draw fewer clients than a round
    needs (``required_replies``, and SecAgg+'s 3 or CKKS's 2)."""
    from securefed.app.central_dp import adapter_options

    fed = config.federation
    population = adapter_options(config).get("poisson_population", 0)
    if not population:
        return
    q = fed.clients_per_round / population
    need = max(fed.required_replies, {"secagg": 3, "ckks": 2}.get(config.secure.mode, 1))

    def run_shortfall(m: int) -> float:
        return 1 - (1 - _binom_below(population, q, m)) ** fed.rounds

    if run_shortfall(need) > MAX_SHORTFALL:
        ok = max((m for m in range(1, fed.clients_per_round + 1)
                  if run_shortfall(m) <= MAX_SHORTFALL), default=0)
        hint = f"set [federation] min_replies <= {ok}" if ok else "raise clients_per_round"
        raise ConfigError(
            f"[federation] min_replies = {fed.min_replies} (a round needs {need} replies) "
            f"under [user_dp] sampling = 'poisson': each of {population} clients joins a "
            f"round with q = {q:g}, so one of {fed.rounds} rounds draws fewer with "
            f"probability {run_shortfall(need):.2f} (> {MAX_SHORTFALL:g}) and ends the run; "
            f"{hint}, or use [user_dp] sampling = 'fixed'")


def _seeds(config: ExperimentConfig) -> dict[str, Any]:
    seed = config.experiment.seed
    source = {"secure": "OS CSPRNG (unseeded)", "seeded": f"seeded from {seed}"}
    out: dict[str, Any] = {"experiment": seed, "partitioning": seed}
    if config.dp.enabled:
        out["dp_noise"] = source[config.dp.randomness]
    if config.user_dp.enabled:
        out["user_dp_noise_and_sampling"] = source[config.user_dp.randomness]
    return out


def _key(config: ExperimentConfig, engine: str) -> str:
    return json.dumps([engine, config.to_dict()], sort_keys=True, default=str)


def check_config(config: ExperimentConfig, *, engine: str = "simulation") -> RunPlan:
    """Validate ``config`` for ``engine`` before anything starts; return its plan.

    Parameters
    ----------
    config : ExperimentConfig
        The resolved experiment (overrides applied).
    engine : {"simulation", "inprocess"}
        Where it will run; ``[resources]`` is checked for the simulation engine only.

    Returns
    -------
    RunPlan

    Raises
    ------
    SecurefedError
        A one-line :class:`~securefed.exceptions.ConfigError` (or
        :class:`~securefed.exceptions.OfflineError`, ...) naming the value and what
        would be valid; see the module docstring for the order of the checks.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    parallel = _check_resources(config, engine)  # depends on the machine: never memoised
    key = _key(config, engine)
    if key in _PLANS:
        return _PLANS[key]
    _check_poisson(config)
    user_dp = user_dp_plan(config)
    modality, data = _check_plugins(config)
    _check_secagg_floors(config)
    _check_modality(config, modality, data)
    train, val = partition_sizes(config, data)
    payload = payload_plan(config)
    secure = secure_plan(config, payload["payload_values"])
    fed = config.federation
    plan = RunPlan(
        engine=engine, method=config.method.name, backbone=config.model.backbone,
        dataset=config.data.dataset, modality=modality, num_clients=config.data.num_clients,
        clients_per_round=fed.clients_per_round, required_replies=fed.required_replies,
        evaluate_clients=fed.evaluate_clients, rounds=fed.rounds,
        client_cpus=config.resources.client_cpus, client_gpus=config.resources.client_gpus,
        parallel_clients=None if parallel is None else min(parallel, fed.clients_per_round),
        train_examples=len(data.train), test_examples=len(data.test),
        train_sizes=tuple(train), val_sizes=tuple(val),
        trainable_params=payload["trainable_params"],
        payload_values=payload["payload_values"], payload_bytes=payload["payload_bytes"],
        bytes_up=int(secure.pop("bytes_up", payload["payload_bytes"])),
        bytes_down=payload["payload_bytes"], secure=secure,
        dp=sample_dp_plan(config, train, payload["trainable_params"]), user_dp=user_dp,
        seeds=_seeds(config))
    if len(_PLANS) >= 16:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[key] = plan
    return plan
