"""Flower's legacy-API variants of the round-time benchmark (``bench/round_time.py``).

Two apps on Flower 1.41's legacy compatibility layer, both driven by
``flwr.server.workflow.DefaultWorkflow`` with the legacy ``flwr.server.strategy.FedAvg``
and a ``NumPyClient`` (``.to_client()``):

* :func:`flower_plaintext`: the plain fit workflow, no secure aggregation;
* :func:`flower_secaggplus`: ``SecAggPlusWorkflow`` as the fit workflow and
  ``secaggplus_mod`` on the client (the only place Flower 1.41 offers SecAgg+).

Clients do not train (unless ``--train-steps``: :meth:`ClientSpec.work`, results
discarded): :class:`PerturbClient` returns the global payload it received plus
its deterministic perturbation (:meth:`bench.round_time.RoundSetup.delta`) and weight, so
a round is aggregation + protocol + transport. The fit workflow is wrapped by
:class:`TimedFitWorkflow`, which times each round with a
:class:`~bench.round_time.RoundTimer` and checks the new global against the weighted mean
of the client payloads computed from the global the round started with.

This module imports :mod:`bench.round_time` only for type checking (``round_time``
registers these factories), so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, NDArrays, Scalar, ndarrays_to_parameters
from flwr.compat.client.client import Client
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

if TYPE_CHECKING:
    from bench.round_time import ClientSpec, RoundSetup, RoundTimer

__all__ = [
    "PerturbClient",
    "TimedFitWorkflow",
    "flower_plaintext",
    "flower_secaggplus",
    "flower_secaggplus_plan",
    "legacy_client_app",
    "legacy_server_app",
    "secaggplus_error_bound",
]

#: SecAgg+ settings of the ``flower-secagg+`` variant: 3 shares (odd, so valid for any
#: n >= 3: an even count below n crashes Flower's clients), threshold 2, and Flower's
#: own defaults for the rest (clipping 8, quantisation 2**22, modulus 2**32, max weight
#: 1000).
FLOWER_SECAGG_DEFAULTS: dict[str, Any] = {
    "num_shares": 3, "reconstruction_threshold": 2, "clipping_range": 8.0,
    "quantization_range": 2**22, "modulus_range": 2**32, "max_weight": 1000.0,
}

Workflow = Callable[[Grid, Context], None]


class PerturbClient(NumPyClient):
    """Returns ``spec.reply(index, global)`` with weight ``spec.weight(index)``."""

    def __init__(self, spec: ClientSpec, index: int) -> None:
        self.spec, self.index = spec, index

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]
            ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        self.spec.work(self.index, parameters)  # --train-steps: real local training
        return self.spec.reply(self.index, parameters), self.spec.weight(self.index), {}


def legacy_client_app(setup: RoundSetup, *, secagg: bool) -> ClientApp:
    """A legacy ``ClientApp`` of :class:`PerturbClient` (partition id = client index),
    with ``secaggplus_mod`` when ``secagg``. It closes over ``setup.client`` only, not
    the payload: Ray pickles the app into every task."""
    spec = setup.client

    def client_fn(context: Context) -> Client:
        return PerturbClient(spec, int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secagg else [])


class TimedFitWorkflow:
    """Wrap a legacy fit workflow: time each call (one round) and check its aggregate.

    The timed span is exactly ``inner(grid, context)``: sending the global, every
    protocol stage, the clients' replies and the server's aggregation. The check (new
    global vs :meth:`RoundSetup.expected`) runs after the clock stops.
    """

    def __init__(self, inner: Workflow, setup: RoundSetup, timer: RoundTimer) -> None:
        self.inner, self.setup, self.timer = inner, setup, timer

    def __call__(self, grid: Grid, context: Context) -> None:
        assert isinstance(context, LegacyContext)
        state = context.state
        rnd = int(state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])  # type: ignore[arg-type]
        before = [a.numpy() for a in state.array_records[MAIN_PARAMS_RECORD].values()]
        with self.timer.round(rnd):
            self.inner(grid, context)
        after = [a.numpy() for a in state.array_records[MAIN_PARAMS_RECORD].values()]
        self.timer.check(rnd, after, self.setup.expected(before))


def legacy_server_app(setup: RoundSetup, fit_workflow: Workflow,
                      info: dict[str, Any]) -> ServerApp:
    """A legacy ``ServerApp``: ``DefaultWorkflow(TimedFitWorkflow(fit_workflow))`` with
    ``FedAvg`` over all ``setup.num_clients`` clients, no evaluation; the timer's JSON
    (with ``info``) goes to ``setup.timings_path`` when the run ends."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        n = setup.num_clients
        strategy = FedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
            min_evaluate_clients=0, min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(setup.initial_arrays()),
        )
        legacy = LegacyContext(context, config=ServerConfig(num_rounds=setup.rounds),
                               strategy=strategy)
        timer = setup.timer()
        DefaultWorkflow(fit_workflow=TimedFitWorkflow(fit_workflow, setup, timer))(
            grid, legacy)
        timer.write(info)

    return app


def secaggplus_error_bound(setup: RoundSetup, params: dict[str, Any]) -> float:
    """Worst-case error of Flower's SecAgg+ weighted mean on ``setup``'s payload.

    Each client multiplies its vector by ``r_i = round(w_i / max_weight * Q) / Q``
    (``Q`` = quantisation range) and stochastically rounds it onto a grid of step
    ``2 c / Q`` (``c`` = clipping range), an error below one step; the server divides
    the sum by ``sum r_i``. So ``|error| <= n * 2c/Q / sum r_i`` plus float64 rounding.
    """
    q, c = params["quantization_range"], params["clipping_range"]
    ratios = [round(setup.weight(i) / params["max_weight"] * q) / q
              for i in range(setup.num_clients)]
    return setup.num_clients * (2 * c / q) / sum(ratios) + 1e-9


def flower_plaintext(setup: RoundSetup) -> tuple[ServerApp, ClientApp]:
    """Legacy FedAvg with the default fit workflow: no secure aggregation."""
    from flwr.server.workflow.default_workflows import default_fit_workflow

    info = {"api": "legacy", "fit_workflow": "default_fit_workflow",
            "tolerance": setup.plain_tolerance()}
    return (legacy_server_app(setup, default_fit_workflow, info),
            legacy_client_app(setup, secagg=False))


def flower_secaggplus(setup: RoundSetup, **overrides: Any) -> tuple[ServerApp, ClientApp]:
    """Legacy FedAvg with ``SecAggPlusWorkflow`` (:data:`FLOWER_SECAGG_DEFAULTS`, any of
    them overridden by keyword) and ``secaggplus_mod`` on the clients."""
    params = {**FLOWER_SECAGG_DEFAULTS, **overrides}
    workflow = SecAggPlusWorkflow(**params)
    n = setup.num_clients
    shares = params["num_shares"]
    if isinstance(shares, int) and shares < n and shares % 2 == 0:
        raise ValueError(f"num_shares={shares} is even and below n={n}: Flower's clients "
                         "crash (IndexError in _share_keys); use an odd value")
    info = {"api": "legacy", "fit_workflow": "SecAggPlusWorkflow", "secaggplus": params,
            "max_weight_ratio": max(setup.weight(i) for i in range(n)) / params["max_weight"],
            "tolerance": secaggplus_error_bound(setup, params)}
    bound = setup.max_abs_value()
    if bound * info["max_weight_ratio"] >= params["clipping_range"]:
        raise ValueError(f"payload values up to {bound} would be clipped")
    return (legacy_server_app(setup, workflow, info),
            legacy_client_app(setup, secagg=True))



def flower_secaggplus_plan(setup: RoundSetup) -> tuple[ServerApp, ClientApp]:
    """``flower-secagg+`` with the graph of ``securefed.secagg.plan`` (dropout 0): each
    client shares with ``degree`` neighbours plus itself (``num_shares = degree + 1``,
    made odd if below n) and ``reconstruction_threshold = threshold``: Flower's protocol
    at the same neighbourhood size as ours, for a like-for-like comparison."""
    from securefed.secagg.plan import plan

    n = setup.num_clients
    p = plan(n, sum(int(np.size(v)) for v in setup.payload.values()), 0.0)
    shares = min(p.degree + 1, n)
    if shares < n and shares % 2 == 0:
        shares += 1
    return flower_secaggplus(setup, num_shares=shares, reconstruction_threshold=p.threshold)
