"""Sample-level DP-SGD for one client's local training, on Opacus's per-sample gradients.

DP-SGD (Abadi et al. 2016, arXiv:1607.00133): every step draws a **Poisson** sample of
the client's examples (each in with probability ``q = expected_batch_size / N``), clips
each example's gradient to L2 norm ``C`` (``max_grad_norm``), sums, adds Gaussian noise of
standard deviation ``sigma * C`` and divides by the expected batch size. The accountant
then composes ``steps`` Poisson-subsampled Gaussian mechanisms with
``(sigma, q)`` (``securefed.privacy.accountants``).

Opacus (Yousefpour et al. 2021, arXiv:2109.12298) computes the per-sample gradients
(``GradSampleModule``) and clips them (``DPOptimizer``), or, in ``ghost`` mode, computes
only the per-sample gradient **norms** and takes a second backward pass on the
norm-weighted loss (ghost clipping: Li et al. 2022, arXiv:2110.05679; Bu et al. 2023,
arXiv:2210.00038), which never materialises a ``[B, *param]`` gradient tensor and so
saves memory. Both give the same clipped sum. The noise comes from a
:class:`~securefed.privacy.noise.RandomSource` instead of torch's generator, so that
production runs use the OS CSPRNG. A step whose Poisson sample is empty still adds the
noise (the analysis assumes noise at every step). The model is unwrapped after
training, so the per-process cached model stays a plain module and the payload keys do
not change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from securefed.exceptions import ConfigError
from securefed.privacy.noise import RandomSource
from securefed.training import trainable

__all__ = ["CLIPPING_MODES", "PrivateTrainResult", "SourceNoiseDPOptimizer",
           "SourceNoiseGhostDPOptimizer", "steps_per_epoch", "train_private"]

#: Per-sample clipping implementations: Opacus hooks (per-sample gradients) or ghost
#: clipping (per-sample norms, two backward passes).
CLIPPING_MODES = ("hooks", "ghost")


class _SourceNoise:
    """Draw the optimizer's Gaussian noise from a :class:`RandomSource` (mixin)."""

    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int
    params: list[Any]  # Opacus adds summed_grad to each parameter
    original_optimizer: torch.optim.Optimizer
    source: RandomSource

    def _noise_like(self, reference: torch.Tensor) -> torch.Tensor:
        std = self.noise_multiplier * self.max_grad_norm
        sample = self.source.normal(int(reference.numel())) * std
        return torch.from_numpy(sample).to(dtype=reference.dtype,
                                           device=reference.device).view_as(reference)

    def add_noise(self) -> None:
        """Add ``N(0, (sigma C)^2)`` noise from the source to every clipped gradient sum."""
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            p.grad = (p.summed_grad + self._noise_like(p.summed_grad)).view_as(p)
            _mark_as_processed(p.summed_grad)

    def noise_only_step(self) -> None:
        """The step of an empty Poisson sample: the gradient is pure noise, scaled."""
        for p in self.params:
            p.grad = self._noise_like(p.data) / float(self.expected_batch_size)
        self.original_optimizer.step()


class SourceNoiseDPOptimizer(_SourceNoise, DPOptimizer):
    """Opacus's ``DPOptimizer`` with its Gaussian noise drawn from a :class:`RandomSource`."""

    def __init__(self, *args: Any, source: RandomSource, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source


class SourceNoiseGhostDPOptimizer(_SourceNoise, DPOptimizerFastGradientClipping):
    """Opacus's ghost-clipping optimizer with noise from a :class:`RandomSource`."""

    def __init__(self, *args: Any, source: RandomSource, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source


@dataclass(frozen=True)
class PrivateTrainResult:
    """One client's DP-SGD run: what the accountant needs, and the training metrics."""

    num_examples: int
    steps: int
    empty_steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    loss: float
    accuracy: float
    seconds: float


def steps_per_epoch(num_examples: int, expected_batch_size: int) -> int:
    """``ceil(N / B)``: Poisson steps that visit each example once in expectation."""
    return max(1, math.ceil(num_examples / expected_batch_size))


def _bias_only(module: nn.Module) -> bool:
    """A Linear / LayerNorm whose weight is frozen: its per-sample bias gradient (and
    norm) comes from the backprops alone (``opacus.grad_sample.linear`` / ``layer_norm``)."""
    weight = getattr(module, "weight", None)
    return (type(module) in (nn.Linear, nn.LayerNorm) and weight is not None
            and not weight.requires_grad)


class _BiasOnlyActivations:
    """Do not keep the input activations of bias-only layers (BitFit).

    Opacus's forward hook stores every trainable layer's input until the backward pass;
    for a layer whose only trainable tensor is its bias that input is never used, but
    storing it for every Linear of the encoder is what made DP BitFit need far more
    memory than non-private BitFit (where autograd keeps no input of a frozen Linear).
    A zero-width placeholder with the right batch size is kept instead.
    """

    def capture_activations_hook(self, module: nn.Module, forward_input: list[Any],
                                 _forward_output: Any) -> None:
        if _bias_only(module):
            forward_input = [t.new_empty((t.shape[0], 0)) if isinstance(t, torch.Tensor)
                             else t for t in forward_input]
        super().capture_activations_hook(  # type: ignore[misc]
            module, forward_input, _forward_output)


class _GradSampleModule(_BiasOnlyActivations, GradSampleModule):
    """Opacus hooks mode without the activations of bias-only layers."""


class _GhostGradSampleModule(_BiasOnlyActivations, GradSampleModuleFastGradientClipping):
    """Opacus ghost clipping without the activations of bias-only layers."""


def _contiguous_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def _embedding_prehooks(model: nn.Module) -> list[Any]:
    """Make trainable embeddings' index inputs contiguous (ghost mode).

    Opacus 1.6's ghost norm of ``nn.Embedding`` calls ``input_ids.view(-1, 1)``, which
    fails on the expanded (non-contiguous) prompt-token indices of prompt and prefix
    tuning; a forward pre-hook hands the module a contiguous copy instead."""
    return [m.register_forward_pre_hook(_contiguous_inputs) for m in model.modules()
            if isinstance(m, nn.Embedding) and m.weight.requires_grad]


def _batch(inputs: Mapping[str, torch.Tensor], labels: torch.Tensor,
           idx: np.ndarray) -> dict[str, torch.Tensor]:
    index = torch.from_numpy(idx.astype(np.int64))
    out = {k: v.index_select(0, index) for k, v in inputs.items()}
    out["labels"] = labels.index_select(0, index)
    return out


def train_private(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    steps: int,
    source: RandomSource,
    weight_decay: float = 0.0,
    clipping: str = "hooks",
    max_physical_batch_size: int = 0,
) -> PrivateTrainResult:
    """Run ``steps`` DP-SGD steps (AdamW on the privatised gradient) on one client's data.

    Parameters
    ----------
    model : nn.Module
        The tuned classifier; only parameters with ``requires_grad`` are trained.
    inputs, labels : tensors
        The client's whole training split (first dimension = examples).
    noise_multiplier, max_grad_norm : float
        ``sigma`` and the clipping bound ``C``.
    expected_batch_size : int
        ``B``; the sample rate is ``q = B / N`` (capped at 1).
    steps : int
        DP-SGD steps to run (what the accountant is charged).
    source : RandomSource
        Poisson sampling and noise; :class:`~securefed.privacy.noise.SecureSource` in
        production.
    clipping : {"hooks", "ghost"}
        Opacus per-sample gradients, or ghost clipping (same clipped sum, less memory).
    max_physical_batch_size : int
        Largest batch run through the model at once (0: ``expected_batch_size``). A
        Poisson sample is larger than ``B`` about half the time; it is split into
        physical batches whose clipped gradients are summed into one DP step, so peak
        memory follows ``B`` rather than the largest sample.

    Raises
    ------
    ConfigError
        On a non-positive ``C``, ``B`` or ``steps``, a negative ``sigma``, no data, or an
        unknown ``clipping``.
    FloatingPointError
        If the loss becomes NaN or Inf.
    """
    n = int(labels.shape[0])
    if n < 1:
        raise ConfigError("DP-SGD needs at least one training example")
    if not (max_grad_norm > 0 and expected_batch_size >= 1 and steps >= 1
            and noise_multiplier >= 0 and max_physical_batch_size >= 0):
        raise ConfigError(f"invalid DP-SGD settings: C={max_grad_norm}, B={expected_batch_size}, "
                          f"steps={steps}, sigma={noise_multiplier}")
    params = trainable(model)
    if not params:
        raise ConfigError("the model has no trainable parameters")
    if clipping not in CLIPPING_MODES:
        raise ConfigError(f"unknown DP-SGD clipping {clipping!r}; valid: "
                          f"{', '.join(CLIPPING_MODES)}")
    q = min(1.0, expected_batch_size / n)
    physical = max_physical_batch_size or expected_batch_size
    model.train()
    base = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    dp_args: dict[str, Any] = {"noise_multiplier": noise_multiplier,
                               "max_grad_norm": max_grad_norm,
                               "expected_batch_size": expected_batch_size, "source": source}
    wrapped: _GradSampleModule | _GhostGradSampleModule
    optimizer: SourceNoiseDPOptimizer | SourceNoiseGhostDPOptimizer
    prehooks = _embedding_prehooks(model) if clipping == "ghost" else []
    if clipping == "ghost":
        wrapped = _GhostGradSampleModule(
            model, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm,
            use_ghost_clipping=True)
        optimizer = SourceNoiseGhostDPOptimizer(base, loss_reduction="mean", **dp_args)
        criterion: Any = DPLossFastGradientClipping(wrapped, optimizer, nn.CrossEntropyLoss(),
                                                    loss_reduction="mean")
    else:
        wrapped = _GradSampleModule(model)
        optimizer = SourceNoiseDPOptimizer(base, **dp_args)
        criterion = nn.CrossEntropyLoss()
    start = time.perf_counter()
    seen = correct = empty = 0
    loss_sum = 0.0
    try:
        for step in range(steps):
            idx = np.flatnonzero(source.poisson_mask(n, q))
            optimizer.zero_grad(set_to_none=True)
            if idx.size == 0:
                optimizer.noise_only_step()
                empty += 1
                continue
            # Physical batches of at most `physical` examples, clipped and summed
            # into one logical Poisson step (Opacus's virtual steps): the noise and the
            # accounting are those of the whole sample, the memory that of `physical`.
            chunks = [idx[i:i + physical] for i in range(0, idx.size, physical)]
            for j, chunk in enumerate(chunks):
                batch = _batch(inputs, labels, chunk)
                logits = wrapped(**{k: v for k, v in batch.items() if k != "labels"}).logits
                loss = criterion(logits, batch["labels"])
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"non-finite training loss at DP step {step}")
                loss.backward()
                last = j == len(chunks) - 1
                optimizer.signal_skip_step(do_skip=not last)
                optimizer.step()
                if not last:
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += float(loss.item()) * chunk.size
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
            seen += int(idx.size)
    finally:
        optimizer.zero_grad(set_to_none=True)
        wrapped.remove_hooks()  # the cached model stays a plain module
        for handle in prehooks:
            handle.remove()
        wrapped._close()
        for p in params:
            for attr in ("grad_sample", "summed_grad", "_forward_counter", "_norm_sample"):
                if hasattr(p, attr):
                    delattr(p, attr)
    return PrivateTrainResult(
        num_examples=n, steps=steps, empty_steps=empty, sample_rate=q,
        noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
        loss=loss_sum / seen if seen else float("nan"),
        accuracy=correct / seen if seen else float("nan"),
        seconds=time.perf_counter() - start)
