"""What may leave a client: one allow-list per mode, in one place.

Every reply a ClientApp sends is one of these **kinds**, named after the message it
answers: ``identify`` (the discovery query), ``train``, ``evaluate``, or
``<protocol>/<stage>`` for a stage of a
secure-aggregation protocol (``secagg+/setup``, ``secagg+/share-keys``,
``secagg+/masked-input``, ``secagg+/unmask``, ``ckks/enroll``, ``ckks/keygen``,
``ckks/setup``, ``ckks/decrypt``). For each kind a :class:`Shape` names the
ArrayRecords, the ConfigRecords and their keys, the MetricRecords and their keys that
may leave, and the metric values that are fixed (the weight ``num-examples = 1`` where
weights are uniform).

Modes and the registry
----------------------
:data:`EGRESS` holds one allow-list builder per mode: ``plaintext`` (no defence),
``dp`` (sample-level DP-SGD), ``user_dp`` (user-level DP), ``secagg`` (SecAgg+) and
``ckks``. Each builder names *every* kind its mode permits. A run's modes are the
defences it turns on (``plaintext`` when none is on), and **its allow-list is the
intersection of its modes' allow-lists**: a kind is permitted only if every mode
permits it, with only the records and keys every mode permits, and every fixed value
any mode fixes. Every mode permits ``identify`` (:data:`IDENTIFY_SHAPE`): the node's
partition id and roster name, labels rather than private data. A secure mode permits
no plaintext ``train`` reply (the payload would leave unmasked) and no stage of the
other protocol; ``dp`` and ``user_dp`` permit the payload and the protocol fields, but
no statistic computed from private data.

Per-client statistics (``[report] client_stats``)
-------------------------------------------------
Train loss and accuracy, train steps and seconds (they reveal the partition size),
evaluation loss and accuracy and count, the update's L-infinity norm and clip count:

=====================  ==========================================================
``clear``              plaintext runs only (the default there): sent as computed
``off``                dropped (the default in every private run)
``noised``             ``[dp]`` without ``[user_dp]``: Gaussian mechanism on bounded
                       sums, charged to the client's own accountant
                       (:mod:`securefed.privacy.stats`)
``secure-sum``         a secure mode without ``[dp]`` or ``[user_dp]``: appended to the
                       masked / encrypted vector; the server sees only their sum
                       (:class:`strategies.sum_only.SecureStats`)
=====================  ==========================================================

``secure-sum`` is refused under ``[dp]`` and ``[user_dp]`` (an exact sum of private
statistics is not covered by the accounted noise), ``noised`` under ``[user_dp]``
(sample-level noise does not protect a whole user). Under a secure mode with
``on_overflow = "clip"`` and without ``[user_dp]``, the clip count travels summed
inside the channel. Federated evaluation needs ``clear`` or ``noised``.

The DP ledger (``dp-*``: epsilon, delta, sigma, clip norm, sample rate, steps) leaves
under ``[dp]``: the server's ``privacy.jsonl``. It reveals the partition size ``n``
through ``q = B / n`` (DP-SGD's accounting treats ``q`` as public, as Opacus does); see
``docs/threat-model.md``.

Enforcement is :func:`securefed.app.egress_mod.egress_mod`, the outermost client mod.
This module is pure (no Flower, no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import reduce
from typing import TYPE_CHECKING, Any

from securefed.exceptions import ConfigError
from securefed.registry import Registry

if TYPE_CHECKING:
    from securefed.config import ExperimentConfig

__all__ = ["EGRESS", "IDENTIFY_KIND", "IDENTIFY_SHAPE", "AllowList", "EgressSettings",
           "Shape", "active_modes", "client_egress",
           "client_weight", "egress_for", "resolve_client_stats", "secure_stat_names"]

WEIGHT = "num-examples"
NORM_BIT = "norm_bit"  # flwr.supercore.differential_privacy.KEY_NORM_BIT
LEDGER = frozenset({"dp-epsilon", "dp-delta", "dp-noise-multiplier", "dp-sample-rate",
                    "dp-steps", "dp-total-steps", "dp-clip-norm"})
TRAIN_STATS = frozenset({"train-loss", "train-accuracy"})
TRAIN_INFO = frozenset({"train-steps", "train-seconds"})
EVAL_STATS = frozenset({"eval-loss", "eval-accuracy"})
UPDATE_STATS = frozenset({"secure-clipped", "secure-max-abs-update"})

_PAYLOAD_ARRAYS = frozenset({"arrays"})
_PAYLOAD_CONFIGS = {"layout": frozenset({"layout"})}
SECURE_RECORD = "secure"  # strategies.sum_only.PROTOCOL_RECORD

#: Fields of each protocol stage's reply record (``secagg+``: securefed.secagg.serial;
#: ``ckks``: securefed.app.ckks_mod). A new field or stage is added here, or it never
#: leaves a client.
PROTOCOL_FIELDS: dict[str, frozenset[str]] = {
    "secagg+/setup": frozenset({"kind", "sender", "c-public", "s-public", "name",
                                "signature"}),
    "secagg+/share-keys": frozenset({"kind", "sender", "to", "ciphertexts"}),
    "secagg+/masked-input": frozenset({"kind", "sender", "bits", "vector"}),
    "secagg+/consistency": frozenset({"kind", "sender", "signature"}),
    "secagg+/unmask": frozenset({"kind", "sender", "b-ids", "b-shares", "s-ids",
                                 "s-shares"}),
    "ckks/enroll": frozenset({"name", "authority", "transport-public", "signature"}),
    "ckks/keygen": frozenset({"public-context", "epoch", "wrapped-for", "wrapped",
                              "transport-public", "signature"}),
    "ckks/setup": frozenset({"ciphertext", "name", "signature"}),
    "ckks/decrypt": frozenset({"sum", "flooding-sigma", "error-bound", "terms"}),
}
#: The stage of each protocol whose reply carries the trained update (and metrics).
UPDATE_STAGE = {"secagg+": "secagg+/masked-input", "ckks": "ckks/setup"}


#: The reply kind of the discovery query (``query.identify``, strategies.identities).
IDENTIFY_KIND = "identify"


@dataclass(frozen=True)
class Shape:
    """What one kind of reply may carry.

    Attributes
    ----------
    arrays : frozenset of str
        ArrayRecord names.
    configs, metrics : mapping of str to frozenset of str
        ConfigRecord / MetricRecord names and the keys each may hold.
    fixed : mapping of str to float
        Metric keys whose value is fixed (``num-examples = 1`` under uniform weights).
    """

    arrays: frozenset[str] = frozenset()
    configs: Mapping[str, frozenset[str]] = field(default_factory=dict)
    metrics: Mapping[str, frozenset[str]] = field(default_factory=dict)
    fixed: Mapping[str, float] = field(default_factory=dict)

    def __and__(self, other: Shape) -> Shape:
        def meet(a: Mapping[str, frozenset[str]],
                 b: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
            return {k: a[k] & b[k] for k in sorted(set(a) & set(b))}

        fixed = dict(self.fixed)
        for key, value in other.fixed.items():
            if fixed.setdefault(key, value) != value:
                raise ConfigError(f"modes fix metric {key!r} to {fixed[key]} and {value}")
        return Shape(self.arrays & other.arrays, meet(self.configs, other.configs),
                     meet(self.metrics, other.metrics), fixed)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (sorted lists), as ``summary.json`` records it."""
        return {"arrays": sorted(self.arrays),
                "configs": {k: sorted(v) for k, v in self.configs.items()},
                "metrics": {k: sorted(v) for k, v in self.metrics.items()},
                "fixed": dict(self.fixed)}


AllowList = dict[str, Shape]
"""``{reply kind: Shape}``; a kind that is absent may not be sent at all."""

#: What an ``identify`` reply may carry, in every mode: the ConfigRecord ``identity``
#: with ``partition-id`` and ``name`` (strategies.identities). Neither is private: the
#: partition id labels a shard of the run's public partitioning (``partitions.json``
#: lists every shard's label histogram; the server needs it to sample and report by a
#: stable identity), and ``name`` is the node's public roster member name, which its
#: SecAgg+ / CKKS setup replies carry anyway. No statistic of local data leaves here.
IDENTIFY_SHAPE = Shape(configs={"identity": frozenset({"partition-id", "name"})})


@dataclass(frozen=True)
class EgressSettings:
    """What the mode builders need from the config (never the whole tree)."""

    client_stats: str  # resolved: clear | off | noised | secure-sum
    dp: bool = False
    adaptive_bit: bool = False  # user-level client-side adaptive clipping (plaintext)


Builder = Callable[[EgressSettings], AllowList]
EGRESS: Registry[Builder] = Registry("egress mode")


def _metrics(keys: frozenset[str]) -> dict[str, frozenset[str]]:
    return {"metrics": keys} if keys else {}


def _train(keys: frozenset[str], fixed: Mapping[str, float] | None = None) -> Shape:
    return Shape(_PAYLOAD_ARRAYS, dict(_PAYLOAD_CONFIGS), _metrics(keys | {WEIGHT}),
                 dict(fixed or {}))


def _stages(protocols: tuple[str, ...], update_keys: frozenset[str]) -> AllowList:
    out: AllowList = {}
    for kind, fields in PROTOCOL_FIELDS.items():
        protocol = kind.split("/")[0]
        if protocol in protocols:
            keys = update_keys if UPDATE_STAGE[protocol] == kind else frozenset()
            out[kind] = Shape(configs={SECURE_RECORD: fields}, metrics=_metrics(keys))
    return out


def _noised(s: EgressSettings) -> bool:
    return s.client_stats == "noised"


def _ledger(s: EgressSettings) -> frozenset[str]:
    return LEDGER if s.dp else frozenset()


def _plaintext(s: EgressSettings) -> AllowList:
    clear = s.client_stats == "clear"
    stats = TRAIN_STATS | TRAIN_INFO if clear else frozenset()
    return {"train": _train(stats),
            "evaluate": Shape(metrics=_metrics(EVAL_STATS | {WEIGHT}) if clear else {}),
            **_stages(("secagg+", "ckks"), stats | (UPDATE_STATS if clear else frozenset()))}


def _evaluate_noised(s: EgressSettings) -> Shape:
    if not _noised(s):
        return Shape()
    return Shape(metrics=_metrics(EVAL_STATS | {WEIGHT}), fixed={WEIGHT: 1})


def _dp(s: EgressSettings) -> AllowList:
    stats = LEDGER | (TRAIN_STATS if _noised(s) else frozenset())
    return {"train": _train(stats, {WEIGHT: 1}), "evaluate": _evaluate_noised(s),
            **_stages(("secagg+", "ckks"), stats)}


def _user_dp(s: EgressSettings) -> AllowList:
    bit = frozenset({NORM_BIT}) if s.adaptive_bit else frozenset()
    return {"train": _train(_ledger(s) | bit, {WEIGHT: 1}), "evaluate": Shape(),
            **_stages(("secagg+", "ckks"), _ledger(s))}


def _secure(protocol: str) -> Builder:
    def build(s: EgressSettings) -> AllowList:
        stats = _ledger(s) | (TRAIN_STATS if _noised(s) else frozenset())
        return {"evaluate": _evaluate_noised(s), **_stages((protocol,), stats)}

    return build


def _identified(build: Builder) -> Builder:
    """``build`` plus the ``identify`` reply, which every mode lets out (IDENTIFY_SHAPE)."""
    def with_identify(s: EgressSettings) -> AllowList:
        return {IDENTIFY_KIND: IDENTIFY_SHAPE, **build(s)}

    return with_identify


EGRESS.register("plaintext", _identified(_plaintext))
EGRESS.register("dp", _identified(_dp))
EGRESS.register("user_dp", _identified(_user_dp))
EGRESS.register("secagg", _identified(_secure("secagg+")))
EGRESS.register("ckks", _identified(_secure("ckks")))


def active_modes(config: ExperimentConfig) -> tuple[str, ...]:
    """The defences a run turns on, in registry order; ``("plaintext",)`` for none."""
    modes = [name for name, on in (("dp", config.dp.enabled),
                                   ("user_dp", config.user_dp.enabled),
                                   (config.secure.mode, config.secure.enabled)) if on]
    return tuple(modes) or ("plaintext",)


def resolve_client_stats(config: ExperimentConfig) -> str:
    """``[report] client_stats`` resolved for the run's modes (``auto`` made concrete).

    Raises
    ------
    ConfigError
        If the choice has no sound mechanism in these modes (the message names the
        valid choices), or federated evaluation is asked for while clients' evaluation
        metrics cannot leave.
    """
    modes = active_modes(config)
    private = modes != ("plaintext",)
    dp, user, secure = config.dp.enabled, config.user_dp.enabled, config.secure.enabled
    valid = ["off"]
    valid += ["clear"] if not private else []
    valid += ["noised"] if dp and not user else []
    valid += ["secure-sum"] if secure and not dp and not user else []
    chosen = config.report.client_stats
    resolved = ("off" if private else "clear") if chosen == "auto" else chosen
    if resolved not in valid:
        raise ConfigError(
            f"[report] client_stats = {chosen!r} has no sound mechanism in mode "
            f"{' + '.join(modes)}; valid choices: auto, {', '.join(sorted(valid))} "
            "(noised: [dp] without [user_dp]; secure-sum: [secure] without DP; clear: "
            "plaintext runs only)")
    if config.federation.evaluate_clients and resolved not in ("clear", "noised"):
        raise ConfigError(
            f"[federation] evaluate_clients = {config.federation.evaluate_clients} sends "
            "clients' evaluation metrics of local data, which cannot leave a client with "
            f"[report] client_stats = {resolved!r} in mode {' + '.join(modes)}; set "
            "evaluate_clients = 0 (the server still evaluates centrally)"
            + (", or client_stats = 'noised'" if "noised" in valid else ""))
    return resolved


def _settings(config: ExperimentConfig) -> EgressSettings:
    return EgressSettings(client_stats=resolve_client_stats(config), dp=config.dp.enabled,
                          adaptive_bit=config.user_dp.clipping == "client-adaptive")


def egress_for(config: ExperimentConfig) -> AllowList:
    """The run's allow-list: the intersection of its modes' allow-lists (see module)."""
    settings = _settings(config)
    lists = [EGRESS.get(mode)(settings) for mode in active_modes(config)]

    def meet(a: AllowList, b: AllowList) -> AllowList:
        return {k: a[k] & b[k] for k in sorted(set(a) & set(b))}

    return reduce(meet, lists)


def secure_stat_names(config: ExperimentConfig) -> tuple[str, ...]:
    """Statistics appended to the masked / encrypted vector, in order (none: ``()``).

    The clip count when ``on_overflow = "clip"`` (not under ``[user_dp]``), then train
    loss and accuracy with ``client_stats = "secure-sum"``.
    """
    if not config.secure.enabled:
        return ()
    clip = config.secure.on_overflow == "clip" and not config.user_dp.enabled
    stats = resolve_client_stats(config) == "secure-sum"
    return (("secure-clipped",) if clip else ()) + (("train-loss", "train-accuracy")
                                                    if stats else ())


def client_weight(config: ExperimentConfig, num_examples: int) -> int:
    """The FedAvg weight a client reports: its example count, or 1 under DP.

    Under ``[dp]`` or ``[user_dp]`` every client weighs 1 (a uniform mean): the exact
    count is private, and a weight from the data would steer the mean by it.
    """
    return 1 if config.dp.enabled or config.user_dp.enabled else int(num_examples)


def client_egress(config: ExperimentConfig) -> dict[str, Any]:
    """``summary.json``'s ``client_egress``: what left clients in the clear, resolved."""
    return {"modes": list(active_modes(config)),
            "client_stats": resolve_client_stats(config),
            "summed_in_secure_channel": list(secure_stat_names(config)),
            "replies": {k: v.to_dict() for k, v in egress_for(config).items()}}
