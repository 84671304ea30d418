"""Optional real local training for the round-time benchmark (``--train-steps K``).

With ``K > 0`` every client of every variant of ``bench/round_time.py`` runs ``K``
AdamW steps of LoRA (r=8, alpha=16) on MiniLM-L6 (the model whose payload the benchmark
sends) before it replies, so that a timed round contains a real client's compute and
not only protocol + transport. The training data is a fixed batch of **random token
ids** (``batch`` x ``seq_len``, all attended, seeded by ``(seed, client)``) with random
labels: the cost of a step depends only on the shapes, and random ids need no dataset.

The trained values are **discarded**: the client still replies with its deterministic
perturbation (:meth:`bench.round_time.ClientSpec.reply`), so every variant's aggregate
can be checked exactly. Only the time cost of training is real.

The model is built once per process (Ray worker) by :func:`_model` and reset to the
global payload before each call; torch runs on one thread per client.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["BATCH_SIZE", "SEQ_LEN", "local_train"]

BATCH_SIZE = 16
SEQ_LEN = 64
LEARNING_RATE = 5e-4


@functools.lru_cache(maxsize=2)
def _model(backbone: str, num_labels: int, seed: int) -> tuple[Any, Any, list[str]]:
    """``(model, method, payload keys)`` of LoRA on ``backbone``, built once per process."""
    import torch

    from securefed.methods import create_method
    from securefed.models import build_classifier, resolve_backbone

    torch.set_num_threads(1)
    bb = resolve_backbone(backbone)
    method = create_method("lora", r=8, alpha=16.0)
    model = method.apply(build_classifier(bb, num_labels, seed=seed), bb.architecture,
                         seed=seed)
    return model, method, list(method.payload(model))


def local_train(steps: int, index: int, arrays: Sequence[np.ndarray], *,
                backbone: str = "minilm-l6", num_labels: int = 5, seed: int = 0) -> float:
    """Load ``arrays`` (the global payload, in payload order) into the cached model and
    run ``steps`` training steps on client ``index``'s fixed random batch; the mean
    training loss (the trained values are thrown away by the caller).

    Raises
    ------
    ValueError
        If ``arrays`` does not match the model's LoRA payload (count or shapes).
    """
    import torch

    from securefed.training import train_local

    if steps <= 0:
        return 0.0
    torch.set_num_threads(1)
    model, method, keys = _model(backbone, num_labels, seed)
    if len(arrays) != len(keys):
        raise ValueError(f"got {len(arrays)} arrays; {backbone}'s LoRA payload has "
                         f"{len(keys)} tensors (train only with the real LoRA payload)")
    method.load_payload(model, dict(zip(keys, arrays, strict=True)))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(1000, vocab, (BATCH_SIZE, SEQ_LEN), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.randint(0, num_labels, (BATCH_SIZE,), generator=gen)}
    torch.manual_seed(seed * 1_000_003 + index)  # dropout
    return float(train_local(model, [batch] * steps, lr=LEARNING_RATE).loss)
