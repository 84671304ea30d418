"""Local optimisation and evaluation of a tuned classifier (client side, torch).

One loop serves every tuning method: the method decides which parameters require
gradients, this loop optimises exactly those with AdamW (Loshchilov & Hutter,
arXiv 1711.05101). DP-SGD (Opacus) wraps the same model, optimiser and batches rather
than copying this loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["EvalResult", "TrainResult", "bounded_sums", "evaluate", "model_device", "on_device",
           "train_local"]

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one client's local training."""

    num_examples: int
    steps: int
    loss: float
    accuracy: float
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    """Loss and accuracy of a model on a split."""

    num_examples: int
    loss: float
    accuracy: float


def model_device(model: nn.Module) -> torch.device:
    """The device the model's parameters live on (CPU for a model without any)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def on_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with every tensor on ``device`` (a no-op on the CPU)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def _forward(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    loss = nn.functional.cross_entropy(logits, batch["labels"])
    return loss, logits


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that require gradients (what the tuning method left unfrozen)."""
    return [p for p in model.parameters() if p.requires_grad]


def train_local(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    lr: float,
    weight_decay: float = 0.0,
    max_steps: int = 0,
) -> TrainResult:
    """Run AdamW over ``batches`` (one pass; callers chain epochs).

    Parameters
    ----------
    model : nn.Module
        A Hugging Face classifier whose trainable parameters the method chose.
    batches : iterable of mapping
        Model inputs plus ``labels``; see :class:`securefed.data.EncodedSplit`.
    lr, weight_decay : float
        AdamW hyper-parameters.
    max_steps : int
        Stop after this many optimiser steps (0 = no cap).

    Raises
    ------
    FloatingPointError
        If the loss becomes NaN or Inf (nothing non-finite is ever sent).
    """
    params = trainable(model)
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    start = time.perf_counter()
    steps = seen = correct = 0
    loss_sum = 0.0
    device = model_device(model)
    for batch in _capped(batches, max_steps):
        batch = on_device(batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss, logits = _forward(model, batch)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite training loss at step {steps}")
        loss.backward()
        optimizer.step()
        n = int(batch["labels"].shape[0])
        steps += 1
        seen += n
        loss_sum += float(loss.item()) * n
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    if seen == 0:
        raise ValueError("no training batches: the client's partition is empty")
    return TrainResult(seen, steps, loss_sum / seen, correct / seen,
                       time.perf_counter() - start)


def _capped(batches: Iterable[Batch], max_steps: int) -> Iterator[Batch]:
    for i, batch in enumerate(batches):
        if max_steps and i >= max_steps:
            return
        yield batch


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch]) -> EvalResult:
    """Mean cross-entropy and accuracy over ``batches`` in eval mode."""
    model.eval()
    seen = correct = 0
    loss_sum = 0.0
    device = model_device(model)
    for batch in batches:
        batch = on_device(batch, device)
        loss, logits = _forward(model, batch)
        n = int(batch["labels"].shape[0])
        seen += n
        loss_sum += float(loss.item()) * n
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    if seen == 0:
        return EvalResult(0, float("nan"), float("nan"))
    return EvalResult(seen, loss_sum / seen, correct / seen)


@torch.no_grad()
def bounded_sums(model: nn.Module, batches: Iterable[Batch], loss_bound: float) -> np.ndarray:
    """``(sum_i min(l_i, B) / B, sum_i correct_i, n)`` over ``batches`` in eval mode.

    Each example adds at most 1 to every coordinate: the bounded sums that the
    Gaussian mechanism of :mod:`securefed.privacy.stats` noises (sensitivity sqrt 3).
    """
    model.eval()
    sums = np.zeros(3)
    device = model_device(model)
    for batch in batches:
        batch = on_device(batch, device)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        losses = nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        clipped = torch.clamp(torch.nan_to_num(losses, nan=loss_bound, posinf=loss_bound),
                              0.0, loss_bound)
        sums += (float(clipped.sum()) / loss_bound,
                 float((logits.argmax(-1) == batch["labels"]).sum()),
                 float(batch["labels"].shape[0]))
    return sums
