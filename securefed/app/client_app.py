"""The securefed ClientApp (Flower Message API).

``train``: load the global adapter payload, train locally, reply with the new payload
(only the method's trainable tensors, keyed by name) and metrics.
``evaluate``: load the global payload and report loss/accuracy on the client's local
validation split (federated evaluation).

The experiment config comes from ``context.run_config`` (see
:func:`securefed.app.settings.config_from_run_config`), the client's partition from
``context.node_config["partition-id"]``. Client-side privacy steps (clipping, masking,
encryption) attach as Flower mods around these handlers in later issues; the order is
documented in ``docs/architecture.md``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from securefed.app.ckks_mod import ckks_mod
from securefed.app.runtime import client_data, tuned_model
from securefed.app.secagg_mod import secagg_mod
from securefed.app.settings import config_from_run_config, partition_id_of
from securefed.exceptions import PayloadError
from securefed.training import evaluate, train_local
from strategies.records import read_payload, write_payload

__all__ = ["app", "handle_evaluate", "handle_train"]

#: Privacy mods, outermost first. ``secagg_mod`` passes through every message that is
#: not part of a SecAgg+ round; clipping mods (DP) go after it so that they run inside
#: it, on the update before it is masked.
MODS: list[Mod] = [secagg_mod, ckks_mod]

app = ClientApp(mods=MODS)


def _global_payload(msg: Message) -> dict[str, np.ndarray]:
    return read_payload(msg.content)


def _threads(n: int) -> None:
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def handle_train(msg: Message, context: Context) -> Message:
    """Train the global adapter on this client's partition and reply with it."""
    config = config_from_run_config(context.run_config)
    _threads(config.train.torch_threads)
    pid = partition_id_of(context)
    tm = tuned_model(config)
    data = client_data(config, pid)
    tm.load(_global_payload(msg))
    server_round = msg.content.config_records["config"].get("server-round", 0)
    if not isinstance(server_round, int):
        raise PayloadError(f"config 'server-round' must be an int, got {server_round!r}")
    # Dropout and other torch randomness: reproducible per (seed, client, round), so
    # that a rerun (or the same round under secure aggregation) trains identically.
    torch.manual_seed((config.experiment.seed * 1_000_003 + pid * 7919 + server_round)
                      % 2**63)
    started = time.perf_counter()
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
    metrics = MetricRecord({
        "num-examples": len(data.train),
        "train-loss": loss,
        "train-accuracy": acc,
        "train-steps": steps,
        "train-seconds": time.perf_counter() - started,
    })
    content = RecordDict({**write_payload(tm.payload()), "metrics": metrics})
    return Message(content, reply_to=msg)


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global adapter on this client's local validation split."""
    config = config_from_run_config(context.run_config)
    _threads(config.train.torch_threads)
    tm = tuned_model(config)
    data = client_data(config, partition_id_of(context))
    tm.load(_global_payload(msg))
    res = evaluate(tm.model, data.val.batches(config.train.eval_batch_size, shuffle=False))
    empty = res.num_examples == 0
    metrics = MetricRecord({
        "num-examples": res.num_examples,
        "eval-loss": 0.0 if empty else res.loss,
        "eval-accuracy": 0.0 if empty else res.accuracy,
    })
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower entry point for ``train`` messages."""
    return handle_train(msg, context)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Flower entry point for ``evaluate`` messages."""
    return handle_evaluate(msg, context)

