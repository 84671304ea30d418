"""The securefed ServerApp (Flower Message API).

It reads the experiment config from the run config, builds the same deterministic
initial adapter the clients build, runs :class:`strategies.AdapterFedAvg` through the
grid it is given (Flower's simulation engine, a SuperLink deployment, or the
in-process grid), evaluates the global adapter centrally on the held-out split after
every round, and writes the run directory: resolved ``config.toml``, per-client label
histograms, ``metrics.jsonl``, ``summary.json``, plots and the exported adapter.

The strategy itself is numpy-only; torch is used here only for central evaluation and
to build the initial payload (see ``docs/architecture.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import tomli_w
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from securefed.adapters import export_run_adapter
from securefed.app.central_dp import adapter_options, user_dp_facts, wrap_user_dp
from securefed.app.egress import client_egress
from securefed.app.progress_grid import ProgressGrid
from securefed.app.runtime import heldout_split, histograms, tuned_model, write_json
from securefed.app.secure import secure_facts, wrap_strategy
from securefed.app.settings import config_from_run_config, run_dir_of
from securefed.config import ExperimentConfig
from securefed.exceptions import (
    AggregationError,
    PrivacyBudgetExhausted,
    PrivacyError,
    SecurefedError,
)
from securefed.report.plots import RunFacts, plot_run
from securefed.report.recorder import RunRecorder
from securefed.training import evaluate
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.records import payload_to_record, raw_nbytes, record_to_payload

__all__ = ["app", "run_server"]

log = logging.getLogger(__name__)

app = ServerApp()


def _train_config(config: ExperimentConfig) -> ConfigRecord:
    t = config.train
    return ConfigRecord({"lr": t.lr, "local-epochs": t.local_epochs,
                         "batch-size": t.batch_size})


def run_server(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Run a whole federated experiment through ``grid``; return ``summary.json``.

    Raises
    ------
    AggregationError
        If a round has fewer valid replies than required, or any other error ends a
        round (an error that is not a SecurefedError is re-raised as
        AggregationError, chained; a SecurefedError as itself);
        ``summary.json`` then records ``status = "failed"`` and the reason first.
    PrivacyError
        A privacy refusal of the user-level DP or secure wrappers (same summary).
    """
    config = config_from_run_config(run_config)
    run_dir = run_dir_of(run_config, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(tomli_w.dumps(config.to_dict()))
    write_json(run_dir / "partitions.json", histograms(config))

    tm = tuned_model(config)
    initial = {k: v.copy() for k, v in tm.initial.items()}
    tm.load(initial)  # the per-process model may hold a previous run's adapter
    cap = config.capture
    recorder = RunRecorder(run_dir, capture=(cap.round, cap.client_index) if cap.round else None)
    fed = config.federation
    inner = AdapterFedAvg(
        clients_per_round=fed.clients_per_round,
        min_replies=fed.required_replies,
        evaluate_clients=fed.evaluate_clients,
        max_payload_bytes=int(fed.max_payload_mb * 2**20),
        max_weight=config.secure.max_weight,  # bounds plaintext weights too
        rng=np.random.default_rng(config.experiment.seed),
        observer=recorder,
        num_partitions=config.data.num_clients,  # nodes are sampled by partition id
        **adapter_options(config),
    )
    strategy = wrap_user_dp(config, wrap_strategy(config, inner, tm.method), inner, recorder)
    test = heldout_split(config) if fed.central_eval else None

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        acc = loss = None
        if test is not None:
            tm.load(record_to_payload(arrays))
            res = evaluate(tm.model, test.batches(config.train.eval_batch_size,
                                                  shuffle=False))
            acc, loss = res.accuracy, res.loss
        row = recorder.on_central_eval(server_round, acc, loss)
        log.info("round %d: %s", server_round, row)
        if acc is None or loss is None:
            return None
        return MetricRecord({"accuracy": acc, "loss": loss})

    facts = {
        "method": config.method.name,
        "backbone": config.model.backbone,
        "dataset": config.data.dataset,
        "num_clients": config.data.num_clients,
        "clients_per_round": fed.clients_per_round,
        "rounds": fed.rounds,
        "seed": config.experiment.seed,
        "trainable_params": int(sum(v.size for v in initial.values())),
        "payload_tensors": len(initial),
        "payload_raw_bytes": raw_nbytes(initial),
        "aggregation": tm.method.semantics.kind.value,
        "exact_under_sum": tm.method.semantics.exact_under_sum,
        "adapter_dir": None,
        **secure_facts(config, tm.method),
        **user_dp_facts(config),
        "client_egress": client_egress(config),  # what left clients in the clear
    }
    try:
        result = strategy.start(
            grid=ProgressGrid(grid, run_dir),  # progress.json inside each round
            initial_arrays=payload_to_record(initial),
            num_rounds=fed.rounds,
            timeout=fed.round_timeout_s,
            train_config=_train_config(config),
            evaluate_config=ConfigRecord(),
            evaluate_fn=central,
        )
    except PrivacyBudgetExhausted as exc:  # user-level budget: stop cleanly, keep the model
        last = getattr(strategy, "last_arrays", None)
        final = record_to_payload(last) if last is not None and len(last) else initial
        log.warning("run stopped: %s", exc)
        return _finish(config, tm, recorder, run_dir, final, facts, status="stopped",
                       reason=f"privacy budget exhausted: {exc}")
    except (AggregationError, PrivacyError) as exc:  # includes SecAgg+ DropoutError
        if isinstance(exc, AggregationError) and _clients_out_of_budget(inner):
            # every refusal was a client's PrivacyBudgetExhausted: a clean stop
            log.warning("run stopped: %s", exc)
            return _finish(config, tm, recorder, run_dir, inner.global_payload or initial,
                           facts, status="stopped",
                           reason=f"too few clients within their privacy budget: {exc}")
        recorder.summary(status="failed", reason=str(exc), **facts,
                         **recorder.privacy_facts())
        raise
    except KeyboardInterrupt:  # SIGINT/SIGTERM (the launcher completes the summary)
        recorder.summary(status="interrupted", reason="interrupted", **facts,
                         **recorder.privacy_facts())
        raise
    except Exception as exc:  # any other error in a round: a failed run, never a bare trace
        reason = f"{type(exc).__name__}: {exc}"
        log.error("run failed: %s", reason)
        log.debug("run failed", exc_info=True)
        recorder.summary(status="failed", reason=reason, **facts, **recorder.privacy_facts())
        if isinstance(exc, SecurefedError):
            raise  # already typed (a wrapper's ConfigError, a PayloadError, ...)
        raise AggregationError(f"the run failed: {reason}") from exc
    final = record_to_payload(result.arrays) if len(result.arrays) else initial
    return _finish(config, tm, recorder, run_dir, final, facts, status="completed")


def _clients_out_of_budget(inner: AdapterFedAvg) -> bool:
    """Whether every rejection of the failed round was a client's budget refusal."""
    stats = inner.current_stats or (inner.history[-1] if inner.history else None)
    reasons = list(stats.rejected.values()) if stats is not None else []
    return bool(reasons) and all("PrivacyBudgetExhausted" in r for r in reasons)


def _finish(config: ExperimentConfig, tm: Any, recorder: RunRecorder, run_dir: Any,
            final: dict[str, np.ndarray], facts: dict[str, Any], **status: Any
            ) -> dict[str, Any]:
    """Export the final adapter, plot the run and write ``summary.json``."""
    tm.load(final)
    adapter_dir = run_dir / "adapter"
    export_run_adapter(config, tm, adapter_dir)  # records the base by alias, and the task
    plot_run(recorder.rows, run_dir, RunFacts.from_config(config))
    facts["adapter_dir"] = str(adapter_dir)
    return recorder.summary(**status, **facts, **recorder.privacy_facts())


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point."""
    run_server(grid, context.run_config)


