"""The ClientApp's local work: train and evaluate the adapter (torch lives here).

Split from :mod:`securefed.app.client_app` so that loading the ClientApp does not import
torch: in a SuperNode deployment every message starts a fresh ClientApp process, and
the secure-aggregation stages after training (share keys, masked input, unmask, CKKS
decrypt) never touch the model, so they skip torch's start-up cost entirely.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from securefed.app.egress import client_weight
from securefed.app.runtime import ClientData, TunedModel, client_data, tuned_model
from securefed.app.settings import config_from_run_config, partition_id_of
from securefed.config import ExperimentConfig
from securefed.exceptions import PayloadError, SecurefedError
from securefed.training import bounded_sums, evaluate, model_device, train_local
from strategies.records import read_payload, write_payload

__all__ = ["handle_evaluate", "handle_train"]


def _global_payload(msg: Message) -> dict[str, np.ndarray]:
    return read_payload(msg.content)


def _threads(n: int) -> None:
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _place(tm: TunedModel, config: ExperimentConfig) -> None:
    """Put the model on CUDA when ``[resources] client_gpus > 0``, else on the CPU.

    Batches follow the model's device (:func:`securefed.training.on_device`); payloads
    always leave as CPU float32 arrays (``TuningMethod.payload``).
    """
    device = "cuda" if config.resources.client_gpus > 0 else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SecurefedError(
            f"[resources] client_gpus = {config.resources.client_gpus:g}, but this node's "
            "torch sees no CUDA device; set client_gpus = 0 (CPU clients)")
    if model_device(tm.model).type != device:
        tm.model.to(device)


def handle_train(msg: Message, context: Context) -> Message:
    """Train the global adapter on this client's partition and reply with it."""
    config = config_from_run_config(context.run_config)
    _threads(config.train.torch_threads)
    pid = partition_id_of(context)
    tm = tuned_model(config)
    _place(tm, config)
    data = client_data(config, pid)
    tm.load(_global_payload(msg))
    server_round = msg.content.config_records["config"].get("server-round", 0)
    if not isinstance(server_round, int):
        raise PayloadError(f"config 'server-round' must be an int, got {server_round!r}")
    # Dropout and other torch randomness: reproducible per (seed, client, round), so
    # that a rerun (or the same round under secure aggregation) trains identically.
    round_seed = (config.experiment.seed * 1_000_003 + pid * 7919 + server_round) % 2**63
    torch.manual_seed(round_seed)
    started = time.perf_counter()
    if config.dp.enabled:
        from securefed.app.private_training import run_private_round

        def sums() -> np.ndarray:  # bounded sums for noised statistics, on demand
            return bounded_sums(tm.model, data.train.batches(config.train.eval_batch_size,
                                                             shuffle=False),
                                config.report.loss_bound)

        # no raw loss / accuracy: under DP only the ledger and noised statistics exist
        _, ledger = run_private_round(
            config, context, pid, tm.model, data.train.inputs, data.train.labels,
            seed=round_seed, stats=sums)
        metrics = MetricRecord({"num-examples": client_weight(config, len(data.train)),
                                **ledger})
    else:
        metrics = _train_plain(tm, data, config, server_round, started)
    content = RecordDict({**write_payload(tm.payload()), "metrics": metrics})
    return Message(content, reply_to=msg)


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global adapter on this client's local validation split."""
    config = config_from_run_config(context.run_config)
    _threads(config.train.torch_threads)
    tm = tuned_model(config)
    _place(tm, config)
    data = client_data(config, partition_id_of(context))
    tm.load(_global_payload(msg))
    if config.dp.enabled:  # only noised statistics may leave (securefed.app.egress)
        return _evaluate_private(msg, context, config, tm, data)
    res = evaluate(tm.model, data.val.batches(config.train.eval_batch_size, shuffle=False))
    empty = res.num_examples == 0
    metrics = MetricRecord({
        "num-examples": res.num_examples,
        "eval-loss": 0.0 if empty else res.loss,
        "eval-accuracy": 0.0 if empty else res.accuracy,
    })
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _evaluate_private(msg: Message, context: Context, config: ExperimentConfig,
                      tm: TunedModel, data: ClientData) -> Message:
    """Noised evaluation statistics (``client_stats = "noised"``), weight 1; else none."""
    from securefed.app.private_training import noised_stats_on, release_eval_stats

    if not noised_stats_on(config):
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 0})}),
                       reply_to=msg)
    sums = bounded_sums(tm.model, data.val.batches(config.train.eval_batch_size,
                                                   shuffle=False), config.report.loss_bound)
    server_round = msg.content.config_records["config"].get("server-round", 0)
    seed = config.experiment.seed * 7_919 + partition_id_of(context) * 31 + int(
        server_round if isinstance(server_round, int) else 0)
    released = release_eval_stats(config, context, partition_id_of(context), sums, seed)
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, **released})}),
                   reply_to=msg)


def _train_plain(tm: TunedModel, data: ClientData, config: ExperimentConfig,
                 server_round: int, started: float) -> MetricRecord:
    """The non-private local epochs (AdamW on shuffled batches) and their metrics."""
    steps = 0
    loss = acc = 0.0
    for epoch in range(config.train.local_epochs):
        res = train_local(
            tm.model,
            data.train_batches(config.train.batch_size,
                               epoch=server_round * 1000 + epoch,
                               seed=config.experiment.seed),
            lr=config.train.lr,
            weight_decay=config.train.weight_decay,
            max_steps=config.train.max_steps,
        )
        steps += res.steps
        loss, acc = res.loss, res.accuracy
    return MetricRecord({
        "num-examples": client_weight(config, len(data.train)),
        "train-loss": loss,
        "train-accuracy": acc,
        "train-steps": steps,
        "train-seconds": time.perf_counter() - started,
    })
