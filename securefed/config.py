"""Experiment configuration: frozen, validated dataclasses read from TOML.

A config file has one table per concern::

    [experiment]   name, seed, out_dir
    [model]        backbone, max_length, image_size
    [data]         dataset, partitioner, num_clients, alpha, ...
    [method]       name = the tuning method; [method.<name>] its parameters
                   ([method.lora] r, alpha; [method.prompt] num_tokens; ...)
    [federation]   rounds, clients_per_round, min_replies, ...
    [train]        local_epochs, batch_size, lr ("auto": securefed.defaults), ...
    [capture]      round, client_index (save one client's reply for attack evaluation)
    [secure]       mode = none | secagg | ckks, clipping range, ... (securefed.config_secure)
    [dp]           mode = none | sample (DP-SGD), epsilon, delta, budget (securefed.config_dp)
    [user_dp]      clipping = none | server-/client-fixed | -adaptive: user-level DP
                   (securefed.config_user_dp)
    [report]       client_stats = auto | clear | off | noised | secure-sum: what
                   per-client statistics leave a client (securefed.config_report)
    [resources]    client_cpus, client_gpus per virtual client of Flower's simulation
                   engine (securefed.config_resources)

Every table is a frozen dataclass validated in ``__post_init__``; an unknown key is a
:class:`~securefed.exceptions.ConfigError` naming it and listing the valid keys, and a
combination that cannot work (more clients per round than clients, alpha <= 0,
rank <= 0) fails here, before any training starts. No component receives the whole
tree: each gets only its own table.

A config may hold parameter tables for several methods (``[method.lora]``,
``[method.prompt]``, ...); only the chosen method's table is checked, by that method's
own dataclass, so ``--set method.name=bitfit`` works on any config. Sub-table names must
be registered methods; a parameter directly under ``[method]`` is an error saying which
table it belongs in. ``[train] lr = "auto"`` (the default) is resolved when the config
is built, from :mod:`securefed.defaults` for the method and the backbone's family;
``lr_source`` records where the number came from.

The same tree travels to Flower as a flat ``run_config`` with dotted keys
(``"method.lora.r" = 8``), see :func:`to_flat` and :func:`from_flat`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from securefed.config_check import require as _require
from securefed.config_dp import DPConfig
from securefed.config_report import ReportConfig
from securefed.config_resources import ResourcesConfig
from securefed.config_secure import SecureConfig
from securefed.config_user_dp import UserDPConfig
from securefed.exceptions import ConfigError, UnknownNameError

__all__ = [
    "AUTO",
    "CaptureConfig",
    "DPConfig",
    "DataConfig",
    "ExperimentConfig",
    "FederationConfig",
    "MetaConfig",
    "MethodConfig",
    "ModelConfig",
    "ReportConfig",
    "ResourcesConfig",
    "SecureConfig",
    "TrainConfig",
    "UserDPConfig",
    "apply_overrides",
    "from_flat",
    "load_config",
    "to_flat",
]

Scalar = str | int | float | bool


@dataclass(frozen=True)
class MetaConfig:
    """``[experiment]``: run name, experiment seed and run directory."""

    name: str = "experiment"
    seed: int = 0
    out_dir: str = "runs/experiment"

    def __post_init__(self) -> None:
        _require(bool(self.name), "experiment", "name", self.name, "must be non-empty")
        _require(self.seed >= 0, "experiment", "seed", self.seed, "must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: backbone alias / folder / hub id and input sizes."""

    backbone: str = "minilm-l6"
    max_length: int = 128
    image_size: int = 224

    def __post_init__(self) -> None:
        _require(bool(self.backbone), "model", "backbone", self.backbone, "must be non-empty")
        _require(self.max_length > 0, "model", "max_length", self.max_length, "must be > 0")
        _require(self.image_size > 0, "model", "image_size", self.image_size, "must be > 0")


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: dataset, held-out split and the non-IID partitioning."""

    dataset: str = "bbc-news"
    test_fraction: float = 0.2
    max_train: int = 0
    max_test: int = 0
    partitioner: str = "dirichlet"
    num_clients: int = 10
    alpha: float = 0.5
    shards_per_client: int = 2
    min_partition_size: int = 2
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        t = "data"
        _require(0 < self.test_fraction < 1, t, "test_fraction", self.test_fraction, "in (0, 1)")
        _require(self.max_train >= 0, t, "max_train", self.max_train, ">= 0 (0 = all)")
        _require(self.max_test >= 0, t, "max_test", self.max_test, ">= 0 (0 = all)")
        _require(self.num_clients >= 1, t, "num_clients", self.num_clients, "must be >= 1")
        _require(self.alpha > 0, t, "alpha", self.alpha, "Dirichlet alpha must be > 0")
        _require(self.shards_per_client >= 1, t, "shards_per_client", self.shards_per_client,
                 "must be >= 1")
        _require(self.min_partition_size >= 0, t, "min_partition_size",
                 self.min_partition_size, "must be >= 0")
        _require(0 <= self.val_fraction < 1, t, "val_fraction", self.val_fraction, "in [0, 1)")


@dataclass(frozen=True)
class MethodConfig:
    """``[method]``: the tuning method's name and the parameter tables of methods.

    ``tables`` maps a method name to its parameters (``[method.lora] r = 8``). Every key
    of ``tables`` must be a registered method; only the chosen method's table is
    checked, by that method's frozen config dataclass (see
    :func:`securefed.methods.create_method`), which names any unknown parameter. The
    other tables are kept as they are, so switching ``name`` needs no other edit.
    """

    name: str = "lora"
    tables: Mapping[str, Mapping[str, Scalar | list[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.name), "method", "name", self.name, "must be non-empty")
        from securefed.methods import METHODS, create_method

        METHODS.get(self.name)  # UnknownNameError listing the registered methods
        for table, values in self.tables.items():
            if table not in METHODS:
                raise ConfigError(f"[method.{table}] names no tuning method; valid methods: "
                                  f"{', '.join(METHODS.names())}")
            if not isinstance(values, Mapping):
                raise ConfigError(f"[method.{table}] must be a table, got "
                                  f"{type(values).__name__}")
        try:
            create_method(self.name, **self.params)
        except UnknownNameError:
            raise
        except ConfigError as err:
            raise ConfigError(f"[method.{self.name}] {err}") from err

    @property
    def params(self) -> dict[str, Scalar | list[str]]:
        """The chosen method's parameters (its ``[method.<name>]`` table, or none)."""
        return dict(self.tables.get(self.name, {}))


PAYLOAD_FORMS = ("native", "dense")


@dataclass(frozen=True)
class FederationConfig:
    """``[federation]``: rounds, sampling and how many valid replies a round needs."""

    rounds: int = 10
    clients_per_round: int = 5
    min_replies: int = 0
    evaluate_clients: int = 0
    central_eval: bool = True
    max_payload_mb: float = 512.0
    round_timeout_s: float = 3600.0
    payload_form: str = "native"

    def __post_init__(self) -> None:
        t = "federation"
        _require(self.payload_form in PAYLOAD_FORMS, t, "payload_form", self.payload_form,
                 f"must be one of {', '.join(PAYLOAD_FORMS)} (dense: LoRA clients send B·A)")
        _require(self.rounds >= 1, t, "rounds", self.rounds, "must be >= 1")
        _require(self.clients_per_round >= 1, t, "clients_per_round", self.clients_per_round,
                 "must be >= 1")
        _require(self.min_replies >= 0, t, "min_replies", self.min_replies,
                 ">= 0 (0 = every sampled client must reply validly)")
        _require(self.min_replies <= self.clients_per_round, t, "min_replies",
                 self.min_replies, f"cannot exceed clients_per_round={self.clients_per_round}")
        _require(self.evaluate_clients >= 0, t, "evaluate_clients", self.evaluate_clients,
                 ">= 0 (0 = no federated evaluation)")
        _require(self.max_payload_mb > 0, t, "max_payload_mb", self.max_payload_mb, "> 0")
        _require(self.round_timeout_s > 0, t, "round_timeout_s", self.round_timeout_s, "> 0")

    @property
    def required_replies(self) -> int:
        """Valid replies a round needs (``min_replies``, or every sampled client)."""
        return self.min_replies or self.clients_per_round


#: ``[train] lr = "auto"``: take the rate from :mod:`securefed.defaults`.
AUTO: Any = "auto"
#: ``lr_source`` of a rate written in the config (rather than resolved from "auto").
LR_FROM_CONFIG = "config"


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: local optimisation on each client.

    ``lr`` is ``"auto"`` or a float. :class:`ExperimentConfig` resolves ``"auto"`` to
    the default of its method and backbone family (:mod:`securefed.defaults`), so
    ``config.train.lr`` is always a float there, and sets ``lr_source``: ``"config"``
    for a rate the config gave, ``"auto: ..."`` (the pair, the paper, the measurement)
    for a resolved one. ``lr_source`` is derived, never trusted: a file that carries a
    resolved rate with its ``"auto: ..."`` source is read as ``"auto"`` again if the
    rate still equals the default, and as a rate from the config otherwise.
    """

    local_epochs: int = 1
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = AUTO
    weight_decay: float = 0.0
    max_steps: int = 0
    torch_threads: int = 0
    lr_source: str = ""

    def __post_init__(self) -> None:
        t = "train"
        _require(self.local_epochs >= 1, t, "local_epochs", self.local_epochs, "must be >= 1")
        _require(self.batch_size >= 1, t, "batch_size", self.batch_size, "must be >= 1")
        _require(self.eval_batch_size >= 1, t, "eval_batch_size", self.eval_batch_size,
                 "must be >= 1")
        if self.lr != AUTO:
            _require(isinstance(self.lr, int | float) and not isinstance(self.lr, bool)
                     and self.lr > 0, t, "lr", self.lr, 'must be > 0, or "auto"')
        _require(self.weight_decay >= 0, t, "weight_decay", self.weight_decay, "must be >= 0")
        _require(self.max_steps >= 0, t, "max_steps", self.max_steps, ">= 0 (0 = no cap)")
        _require(self.torch_threads >= 0, t, "torch_threads", self.torch_threads,
                 ">= 0 (0 = torch default)")

    @property
    def lr_is_auto(self) -> bool:
        """Whether the rate is (or was resolved from) ``"auto"``."""
        return self.lr == AUTO or self.lr_source.startswith("auto")


@dataclass(frozen=True)
class CaptureConfig:
    """``[capture]``: save one client's reply exactly as the server received it.

    ``round = 0`` disables capture. Otherwise the reply of the ``client_index``-th
    sampled client in that round (before aggregation), the global payload the server
    sent it, and the metadata go to ``<run dir>/captures/`` — the observation a
    gradient-inversion attack against that client starts from.
    """

    round: int = 0
    client_index: int = 0

    def __post_init__(self) -> None:
        _require(self.round >= 0, "capture", "round", self.round, ">= 0 (0 = off)")
        _require(self.client_index >= 0, "capture", "client_index", self.client_index,
                 "must be >= 0")


_TABLES: dict[str, type] = {
    "experiment": MetaConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "method": MethodConfig,
    "federation": FederationConfig,
    "train": TrainConfig,
    "capture": CaptureConfig,
    "secure": SecureConfig,
    "dp": DPConfig,
    "user_dp": UserDPConfig,
    "report": ReportConfig,
    "resources": ResourcesConfig,
}

C = TypeVar("C")


def _build_table(cls: type[C], table: str, values: Mapping[str, Any]) -> C:
    if not isinstance(values, Mapping):
        raise ConfigError(f"[{table}] must be a table, got {type(values).__name__}")
    if cls is MethodConfig:
        return _build_method(values)  # type: ignore[return-value]
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"unknown key [{table}] {key!r}; valid keys: {', '.join(sorted(fields))}"
            )
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        default = fields[key].default
        kwargs[key] = _coerce(table, key, value, default)
    return cls(**kwargs)


def _build_method(values: Mapping[str, Any]) -> MethodConfig:
    """``[method]``: ``name`` plus one sub-table per method; no loose parameters."""
    name = values.get("name", MethodConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"[method] name = {name!r} has the wrong type; expected str")
    tables: dict[str, Mapping[str, Any]] = {}
    for key, value in values.items():
        if key == "name":
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"[method] {key} = {value!r}: method parameters live in the method's own "
                f"table; move it to [method.{name}] (on the command line: "
                f"--set method.{name}.{key}=...)"
            )
        tables[key] = dict(value)
    MethodConfig(name=name, tables=tables)  # checks every table's name
    # An empty table is no table (the flat run_config form cannot carry one).
    return MethodConfig(name=name, tables={k: v for k, v in tables.items() if v})


def _coerce(table: str, key: str, value: Any, default: Any) -> Any:
    """Check a scalar against its default's type (int widens to float)."""
    if (table, key) == ("train", "lr"):  # a float, or "auto"
        if value == AUTO:
            return value
        default = 0.0
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        expected = 'float or "auto"' if (table, key) == ("train", "lr") else (
            type(default).__name__)
        raise ConfigError(f"[{table}] {key} = {value!r} has the wrong type; expected {expected}")
    return value


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: one frozen table per concern, cross-checked."""

    experiment: MetaConfig = field(default_factory=MetaConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    secure: SecureConfig = field(default_factory=SecureConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    user_dp: UserDPConfig = field(default_factory=UserDPConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", _resolve_lr(self))
        fed, data = self.federation, self.data
        if self.capture.round > fed.rounds:
            raise ConfigError(f"[capture] round = {self.capture.round} exceeds "
                              f"[federation] rounds = {fed.rounds}")
        if self.capture.client_index >= fed.clients_per_round:
            raise ConfigError(f"[capture] client_index = {self.capture.client_index} must be "
                              f"< [federation] clients_per_round = {fed.clients_per_round}")
        if fed.clients_per_round > data.num_clients:
            raise ConfigError(
                f"[federation] clients_per_round = {fed.clients_per_round} exceeds "
                f"[data] num_clients = {data.num_clients}"
            )
        if fed.evaluate_clients > data.num_clients:
            raise ConfigError(
                f"[federation] evaluate_clients = {fed.evaluate_clients} exceeds "
                f"[data] num_clients = {data.num_clients}"
            )
        from securefed.app.egress import resolve_client_stats

        resolve_client_stats(self)  # [report] client_stats sound in this mode (ConfigError)

    @classmethod
    def from_dict(cls, tree: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a nested mapping (a parsed TOML document)."""
        for table in tree:
            if table not in _TABLES:
                raise ConfigError(
                    f"unknown table [{table}]; valid tables: {', '.join(_TABLES)}"
                )
        kwargs: dict[str, Any] = {
            t: _build_table(c, t, tree.get(t, {})) for t, c in _TABLES.items()
        }
        return cls(**kwargs)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain-data form; ``from_dict(to_dict())`` round-trips."""
        out: dict[str, dict[str, Any]] = {}
        for table in _TABLES:
            obj = getattr(self, table)
            if isinstance(obj, MethodConfig):
                out[table] = {"name": obj.name,
                              **{m: dict(params) for m, params in obj.tables.items()}}
            else:
                out[table] = dataclasses.asdict(obj)
        return out


def _resolve_lr(config: ExperimentConfig) -> TrainConfig:
    """``[train]`` with ``lr`` a float and ``lr_source`` saying where it came from."""
    train = config.train
    if not train.lr_is_auto:
        return dataclasses.replace(train, lr_source=LR_FROM_CONFIG)
    from securefed.defaults import resolve_lr

    lr, source = resolve_lr(config.method.name, config.model.backbone)
    if train.lr != AUTO and train.lr != lr:  # a resolved rate edited since: the config's
        return dataclasses.replace(train, lr_source=LR_FROM_CONFIG)
    return dataclasses.replace(train, lr=lr, lr_source=source)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a TOML experiment config."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        tree = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
    return ExperimentConfig.from_dict(tree)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_flat(config: ExperimentConfig) -> dict[str, Any]:
    """Flatten to Flower ``run_config`` form: ``{"table.key": value}``.

    Sub-tables add a level: ``"method.lora.r" = 8``.
    """
    return _flatten(config.to_dict())


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``"a.b.c"``, creating the tables on the way."""
    *tables, key = dotted.split(".")
    node = tree
    for name in tables:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {dotted!r}: {name!r} is a value, not a table")
        node = child
    if isinstance(node.get(key), dict):
        raise ConfigError(f"config key {dotted!r} names a table, not a value")
    node[key] = value


def _unflatten(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        parts = dotted.split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"config key {dotted!r} must look like 'table.key'")
        _set_path(tree, dotted, value)
    return tree


def from_flat(flat: Mapping[str, Any]) -> ExperimentConfig:
    """Inverse of :func:`to_flat`; also reads Flower's ``context.run_config``."""
    return ExperimentConfig.from_dict(_unflatten(flat))


def _parse_value(text: str) -> Any:
    """A ``--set`` value is a TOML literal; bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``table.key=value`` overrides (``--set``) and re-validate.

    A key may go one table deeper (``method.lora.r=4``). A learning rate that was
    resolved from ``"auto"`` is resolved again after the overrides, so
    ``--set model.backbone=dinov2-s`` picks the vision default.

    Raises
    ------
    ConfigError
        If an override is not of the form ``table.key=value`` or names an unknown key.
    """
    tree = config.to_dict()
    if config.train.lr_is_auto:
        tree["train"]["lr"] = AUTO
    tree["train"].pop("lr_source", None)
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        dotted = dotted.strip()
        table, dot, key = dotted.partition(".")
        if not sep or not dot or not key or not all(dotted.split(".")):
            raise ConfigError(f"override {item!r} must look like 'table.key=value'")
        if table not in _TABLES:
            raise ConfigError(f"unknown table [{table}] in override {item!r}; valid tables: "
                              f"{', '.join(_TABLES)}")
        _set_path(tree, dotted, _parse_value(raw.strip()))
    return ExperimentConfig.from_dict(tree)
