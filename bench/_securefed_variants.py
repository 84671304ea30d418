"""securefed's own variants of the round-time benchmark (``bench/round_time.py``).

Both run on Flower's **Message API** (``flwr.serverapp.ServerApp`` + ``Strategy.start``,
``flwr.clientapp.ClientApp``), as ``securefed run`` does:

* ``securefed-plaintext``: :class:`strategies.adapter_fedavg.AdapterFedAvg` alone;
* ``securefed-secagg``: the same inside :class:`strategies.secure_aggregation.
  SecureAggregation` (SecAgg+ against a semi-honest server; setup, share-keys,
  masked-input with the train message, and unmask exchanges) and ``secagg_mod`` on the
  client. Clipping range 8 and max weight 1000 (Flower's defaults, like for like with
  ``flower-secagg+``), 32-bit modulus, degree and threshold of ``securefed secagg plan``
  (dropout 0);
* ``securefed-secagg-malicious``: the same against an active server (signed keys, the
  members map and the consistency stage); each simulated node finds its identity in a
  roster written for the run (``SECUREFED_NODE_CONFIG_DIR``, by partition id).

Bytes: every securefed variant also reports ``bytes_up_per_client``, the mean over
rounds and clients of what the strategy counted as uploaded (``TrainRoundStats.
bytes_up``: the serialised protocol records of every stage under SecAgg+, the payload
in plaintext).

Both ClientApps carry ``mods=[secagg_mod]`` like securefed's own ClientApp (the mod
passes plaintext messages through). The client reads the global payload
(``read_payload``), runs :meth:`~bench.round_time.ClientSpec.work` (``--train-steps``)
and replies with :meth:`~bench.round_time.ClientSpec.reply` in the packed wire format
with ``num-examples`` = :meth:`~bench.round_time.ClientSpec.weight`.

Timing: ``Strategy.start`` runs all rounds itself, so :class:`TimedStrategy` wraps the
strategy: the clock starts when ``configure_train`` is called and stops when
``aggregate_train`` returns (SecAgg+ runs its later stages inside ``aggregate_train``),
the span of Flower's fit workflow in ``bench._flower_legacy.TimedFitWorkflow``;
evaluation (disabled: ``evaluate_clients=0``, no ``evaluate_fn``) is outside it.

On the SecAgg+ variant's method label: the benchmark's payload is LoRA's ``A`` and
``B``, whose factor-wise mean is not exact for the model (see
:mod:`strategies.sum_only`), so the wrapper is built with ``method="lora"``,
``exact_under_sum=False`` and ``allow_inexact=True``. What is measured and checked is
the weighted mean of the payload vectors, which SecAgg+ computes up to quantisation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from bench.round_time import register_variant
from securefed.app.identify import register_identify
from securefed.app.nodes import NODE_CONFIG_DIR_ENV, provision_roster
from securefed.app.secagg_mod import secagg_mod
from securefed.secagg.plan import plan
from securefed.secagg.quantize import sum_error_bound
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.records import payload_to_record, read_payload, write_payload
from strategies.secure_aggregation import SecureAggregation

if TYPE_CHECKING:
    from bench.round_time import ClientSpec, RoundSetup, RoundTimer

__all__ = ["SECAGG_SETTINGS", "TimedStrategy", "securefed_client_app",
           "securefed_plaintext", "securefed_secagg", "securefed_secagg_malicious"]

#: ``SecureAggregation`` settings: Flower's clipping range and max weight (like for
#: like with ``flower-secagg+``) and a 32-bit modulus; k and t come from ``plan``.
SECAGG_SETTINGS: dict[str, Any] = {"clipping_range": 8.0, "bits": 32, "max_weight": 1000}


class TimedStrategy(Strategy):
    """Time each training round of ``inner`` and check its aggregate.

    The clock runs from ``configure_train`` (sampling, building the messages) until
    ``aggregate_train`` returns (for SecAgg+ that includes every later protocol stage and
    unmasking); the check (new global vs :meth:`RoundSetup.expected` of the global the
    round started with) runs after the clock stops. Evaluation is delegated untimed.
    """

    def __init__(self, inner: Strategy, setup: RoundSetup, timer: RoundTimer) -> None:
        self.inner, self.setup, self.timer = inner, setup, timer
        self._before: list[np.ndarray] = []

    def bytes_up_per_client(self) -> float | None:
        """Mean uploaded bytes per client and round (``TrainRoundStats.bytes_up``)."""
        core = getattr(self.inner, "inner", self.inner)
        history = getattr(core, "history", [])
        values = [b for h in history for b in h.bytes_up.values()]
        return float(np.mean(values)) if values else None

    def _ordered(self, arrays: ArrayRecord) -> list[np.ndarray]:
        return [arrays[k].numpy() for k in self.setup.payload]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._before = self._ordered(arrays)
        core = getattr(self.inner, "inner", self.inner)
        identities = getattr(core, "identities", None)
        if identities is not None:  # node discovery (round 1) stays off the clock
            identities.refresh(grid)
        self.timer.start(server_round)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        try:
            arrays, metrics = self.inner.aggregate_train(server_round, replies)
        finally:
            self.timer.stop(server_round)
        if arrays is None:
            self.timer.errors[server_round] = float("inf")
        else:
            self.timer.check(server_round, self._ordered(arrays),
                             self.setup.expected(self._before))
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


def securefed_client_app(spec: ClientSpec) -> ClientApp:
    """Message-API ``ClientApp(mods=[secagg_mod])`` replying ``spec.reply`` (packed
    format, ``num-examples`` = ``spec.weight``) after ``spec.work``. Closes over
    ``spec`` only (Ray pickles the app into every task)."""
    app = register_identify(ClientApp(mods=[secagg_mod]))  # answers query.identify

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        i = int(context.node_config["partition-id"])
        glob = read_payload(msg.content)
        arrays = list(glob.values())
        spec.work(i, arrays)
        reply = dict(zip(glob, spec.reply(i, arrays), strict=True))
        metrics = MetricRecord({"num-examples": spec.weight(i)})
        return Message(RecordDict({**write_payload(reply), "metrics": metrics}),
                       reply_to=msg)

    return app


def _server_app(setup: RoundSetup, build: Any, info: dict[str, Any]) -> ServerApp:
    """``ServerApp`` running ``TimedStrategy(build())`` for ``setup.rounds`` rounds; the
    timer's JSON (with ``info``) goes to ``setup.timings_path`` at the end."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        timer = setup.timer()
        strategy = TimedStrategy(build(), setup, timer)
        strategy.start(grid=grid, initial_arrays=payload_to_record(setup.payload),
                       num_rounds=setup.rounds, timeout=600.0,
                       train_config=ConfigRecord(), evaluate_config=ConfigRecord())
        timer.write({**info, "bytes_up_per_client": strategy.bytes_up_per_client()})

    return app


def _inner(setup: RoundSetup) -> AdapterFedAvg:
    n = setup.num_clients
    return AdapterFedAvg(clients_per_round=n, min_replies=n, evaluate_clients=0,
                         rng=np.random.default_rng(0))


@register_variant("securefed-plaintext")
def securefed_plaintext(setup: RoundSetup) -> tuple[ServerApp, ClientApp]:
    """``AdapterFedAvg`` over all n clients, no secure aggregation."""
    info = {"api": "message", "strategy": "AdapterFedAvg",
            "tolerance": setup.plain_tolerance()}
    return _server_app(setup, lambda: _inner(setup), info), securefed_client_app(setup.client)


def secagg_error_bound(setup: RoundSetup, wrapper: SecureAggregation) -> float:
    """Worst-case error of the SecAgg+ weighted mean on ``setup``'s payload.

    Client ``i`` quantises ``(x_i - g) w_i / W`` (``W`` = max weight) with error below
    one grid step, so the unmasked sum is off by less than :func:`sum_error_bound`
    (``n`` steps); the server multiplies by ``W`` and divides by ``sum w_i``. The float32
    cast of the new global and the reference's float32 replies add
    :meth:`RoundSetup.plain_tolerance`.
    """
    n = setup.num_clients
    length = sum(int(np.size(v)) for v in setup.payload.values())
    quant = wrapper.config_for(n, length).quantization
    weights = sum(setup.weight(i) for i in range(n))
    return (sum_error_bound(n, quant) * wrapper.max_weight / weights
            + setup.plain_tolerance())


def _secagg_variant(setup: RoundSetup, degree: int, threshold: int,
                    label: str, adversary: str = "semi-honest") -> tuple[ServerApp, ClientApp]:
    n = setup.num_clients
    length = sum(int(np.size(v)) for v in setup.payload.values())
    if adversary == "malicious":  # run_variant restores the environment afterwards
        roster_dir = setup.timings_path.parent / "roster"
        provision_roster(roster_dir, n)
        os.environ[NODE_CONFIG_DIR_ENV] = str(roster_dir)

    def build() -> SecureAggregation:
        return SecureAggregation(_inner(setup), method="lora", exact_under_sum=False,
                                 allow_inexact=True, degree=degree, threshold=threshold,
                                 adversary=adversary,  # type: ignore[arg-type]
                                 **SECAGG_SETTINGS)

    probe = build()
    cfg = probe.config_for(n, length)
    largest = max(setup.weight(i) for i in range(n))
    if largest > probe.max_weight:
        raise ValueError(f"client weight {largest} exceeds max_weight {probe.max_weight}")
    if setup.client.scale * largest / probe.max_weight >= probe.clipping_range:
        raise ValueError("client updates would leave the clipping range")
    info = {"api": "message", "strategy": "SecureAggregation(AdapterFedAvg)",
            "securefed_secagg": {**SECAGG_SETTINGS, "adversary": adversary,
                                 "degree": cfg.graph.degree,
                                 "threshold": cfg.graph.threshold, "choice": label,
                                 "q_max": cfg.quantization.grid_max,
                                 "step": cfg.quantization.step},
            "tolerance": secagg_error_bound(setup, probe)}
    return _server_app(setup, build, info), securefed_client_app(setup.client)


@register_variant("securefed-secagg")
def securefed_secagg(setup: RoundSetup) -> tuple[ServerApp, ClientApp]:
    """``SecureAggregation(AdapterFedAvg)``: SecAgg+ with :data:`SECAGG_SETTINGS` and
    the degree/threshold of ``securefed secagg plan`` (dropout 0)."""
    n = setup.num_clients
    length = sum(int(np.size(v)) for v in setup.payload.values())
    p = plan(n, length, 0.0, clipping_range=SECAGG_SETTINGS["clipping_range"])
    return _secagg_variant(setup, p.degree, p.threshold, "plan")


@register_variant("securefed-secagg-malicious")
def securefed_secagg_malicious(setup: RoundSetup) -> tuple[ServerApp, ClientApp]:
    """``securefed-secagg`` against an active server: Ed25519-signed keys from a roster
    written for the run, the members map and the consistency stage."""
    n = setup.num_clients
    length = sum(int(np.size(v)) for v in setup.payload.values())
    p = plan(n, length, 0.0, clipping_range=SECAGG_SETTINGS["clipping_range"])
    return _secagg_variant(setup, p.degree, p.threshold, "plan", adversary="malicious")


@register_variant("securefed-secagg-k2")
def securefed_secagg_k2(setup: RoundSetup) -> tuple[ServerApp, ClientApp]:
    """Like ``securefed-secagg`` with 2 neighbours and threshold 2: the neighbourhood of
    ``flower-secagg+`` (3 shares including the client's own, threshold 2)."""
    return _secagg_variant(setup, 2, 2, "k2")
