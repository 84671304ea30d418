"""The exact *dense* payload form of factorised methods (LoRA, FeDeRA).

LoRA (arXiv 2106.09685) adapts a weight as ``W_eff = W + s·B A`` (``s = alpha / r``, as PEFT
computes it). Clients that send ``A`` and ``B`` can only be averaged factor by factor, and
``mean(B)·mean(A) != mean(B·A)``: under secure aggregation, where the server sees nothing
but plain sums, the factor-wise mean is not the mean of the clients' updates. FedEx-LoRA
(arXiv 2410.09432) makes the aggregate exact by folding the residual of the product mean
into the frozen weight ("merge and re-initialise"). This module takes that idea to its
plain-sum form: every client sends, for every adapted layer, the dense cumulative update

    ``<layer path>.delta_weight = W_eff − W0``  (float32, shape ``(out, in)``)

where ``W0`` is the layer's effective weight right after :meth:`DenseFactorised.apply` (the
pre-trained weight; for FeDeRA, arXiv 2404.18848, the residual plus ``s·B0 A0``, i.e. the
original weight before the SVD split). The update is linear in what is sent, so the
weighted mean of the payloads computed from plain sums is *exactly* the mean of the
clients' effective updates. The price is bytes: ``out·in`` floats per layer instead of
``r·(out + in)``.

Loading a dense payload merges it into the frozen base weight and re-initialises the
factors: for LoRA the base becomes ``W0 + delta`` and ``(A, B)`` go back to the seeded
``(A0, B0 = 0)``; for FeDeRA the factors are re-derived from the SVD of the new effective
weight (the PiSSA formula of :mod:`securefed.methods.federa`) and the base holds the
residual. Either way the model computes with ``W0 + delta`` exactly (up to rounding).

Every other trainable tensor of the inner method (the head in ``modules_to_save``) is
sent unchanged under its own key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from torch import nn
from transformers import PreTrainedModel

from securefed.exceptions import ConfigError, MethodError, PayloadError
from securefed.methods import export as export_lib
from securefed.methods._modules import unwrap
from securefed.methods.base import (
    Aggregation,
    AggregationSemantics,
    ExportInfo,
    TuningMethod,
    check_payload,
)
from securefed.methods.registry import METHODS, create_method
from securefed.models.architecture import Architecture

__all__ = [
    "DELTA_SUFFIX",
    "DENSE_FORMAT",
    "DENSE_SEMANTICS",
    "DENSE_STATE_ATTR",
    "DenseFactorised",
    "densifiable_methods",
    "densify",
    "load_dense_export",
]

#: Suffix of the payload key of one adapted layer: ``<layer path>.delta_weight``.
DELTA_SUFFIX = "delta_weight"
#: Export format: ``adapter.safetensors`` laid out as securefed-safetensors, holding the
#: dense payload; ``securefed_method.json`` names the inner method (``inner_method``,
#: ``inner_params``).
DENSE_FORMAT = "securefed-dense"
#: Attribute of the tuned (unwrapped) model holding each layer's ``(W0, A0, B0)``.
DENSE_STATE_ATTR = "securefed_dense_init"
#: The adapter every LoRA-family method builds.
ADAPTER = "default"

DENSE_SEMANTICS = AggregationSemantics(
    Aggregation.LINEAR,
    exact_under_sum=True,
    description="clients send the dense update s·B·A (W_eff − W0) per layer; "
    "its weighted mean is the mean of the clients' updates",
)


@dataclass(frozen=True)
class _Init:
    """One adapted layer's frozen reference: effective weight and factors after apply."""

    w0: torch.Tensor
    a0: torch.Tensor
    b0: torch.Tensor


def densifiable_methods() -> list[str]:
    """Registered methods whose aggregation is factor-wise (those :func:`densify` accepts)."""
    return [n for n in METHODS.names() if METHODS.get(n).semantics.kind is Aggregation.FACTORWISE]


def densify(method: TuningMethod) -> DenseFactorised:
    """Wrap a factor-wise method (``lora``, ``federa``) so that it sends dense updates.

    Raises
    ------
    ConfigError
        If ``method`` is not factor-wise (e.g. ``ffa-lora``, already exact); the message
        names the methods that can be densified.
    """
    return DenseFactorised(method)


@dataclass(frozen=True)
class DenseFactorised(TuningMethod):
    """A LoRA-family method whose payload is the dense effective update per layer.

    Parameters
    ----------
    inner : TuningMethod
        A method with :attr:`~securefed.methods.base.Aggregation.FACTORWISE` semantics
        (LoRA, arXiv 2106.09685; FeDeRA, arXiv 2404.18848).

    Notes
    -----
    Exact under plain sums by construction, after FedEx-LoRA's exact aggregation
    (arXiv 2410.09432): the server averages ``W_eff − W0``, and each client merges the mean
    into its frozen weight and re-initialises the factors. ``name`` is
    ``"<inner>+dense"``; :meth:`trainable_parameters` counts the *transmitted* scalars (so
    that ``payload_nbytes == 4 · trainable_parameters`` as for every method).
    """

    semantics: ClassVar[AggregationSemantics] = DENSE_SEMANTICS

    inner: TuningMethod

    def __post_init__(self) -> None:
        if (
            not isinstance(self.inner, TuningMethod)
            or self.inner.semantics.kind is not Aggregation.FACTORWISE
        ):
            got = getattr(self.inner, "name", repr(self.inner))
            raise ConfigError(
                f"only factor-wise methods can be densified, got {got!r}; "
                f"densifiable: {', '.join(densifiable_methods())}"
            )
        object.__setattr__(self, "name", f"{self.inner.name}+dense")

    def params(self) -> dict[str, Any]:
        return {**self.inner.params(), "dense": True}

    # --- building -------------------------------------------------------------------

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        # Called by TuningMethod.apply under the seeded, forked RNG, like inner.apply.
        tuned = self.inner._apply(model, arch)
        state: dict[str, _Init] = {}
        with torch.no_grad():
            for path, layer in self._layers(tuned).items():
                a0, b0, _ = _factors(layer)
                state[path] = _Init(
                    w0=_effective(layer).detach().clone(),
                    a0=a0.detach().clone(),
                    b0=b0.detach().clone(),
                )
        setattr(unwrap(tuned), DENSE_STATE_ATTR, state)
        return tuned

    def _layers(self, model: nn.Module) -> dict[str, LoraLinear]:
        """Adapted linear layers by module path (Opacus wrapper stripped), checked."""
        root = unwrap(model)
        layers: dict[str, LoraLinear] = {}
        for path, module in root.named_modules():
            if isinstance(module, LoraLinear) and ADAPTER in module.lora_A:
                if module.merged or module.fan_in_fan_out or module.use_dora.get(ADAPTER):
                    raise MethodError(f"{self.name}: {path} is merged, fan-in-fan-out or DoRA")
                if module.lora_bias.get(ADAPTER):
                    raise MethodError(f"{self.name}: {path} has a LoRA bias")
                layers[path] = module
        if not layers:
            raise MethodError(f"{self.name}: the model has no LoRA linear layers")
        return layers

    def _state(self, model: nn.Module) -> dict[str, _Init]:
        state: dict[str, _Init] | None = getattr(unwrap(model), DENSE_STATE_ATTR, None)
        if state is None:
            raise MethodError(f"{self.name}: needs the model returned by {self.name}.apply")
        return state

    def _others(
        self, model: nn.Module, layers: Mapping[str, LoraLinear]
    ) -> dict[str, nn.Parameter]:
        """Trainable tensors other than the LoRA factors (sent unchanged)."""
        factors = {
            f"{path}.{kind}.{ADAPTER}.{n}"
            for path, layer in layers.items()
            for kind, mod in (("lora_A", layer.lora_A[ADAPTER]), ("lora_B", layer.lora_B[ADAPTER]))
            for n, _ in mod.named_parameters()
        }
        others = {k: p for k, p in self.inner._trainable(model).items() if k not in factors}
        stray = sorted(k for k in others if ".lora_" in k)
        if stray:
            raise MethodError(f"{self.name}: LoRA tensors outside linear layers: {stray}")
        return others

    # --- payload --------------------------------------------------------------------

    def payload(self, model: nn.Module) -> dict[str, np.ndarray]:
        """``<layer>.delta_weight = W_eff − W0`` per adapted layer, plus the other trainables."""
        layers, state = self._layers(model), self._state(model)
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for path, layer in layers.items():
                w0 = state[path].w0.to(device=_base_weight(layer).device, dtype=torch.float32)
                delta = _effective(layer) - w0
                out[f"{path}.{DELTA_SUFFIX}"] = delta.to("cpu").numpy().copy()
        for key, param in self._others(model, layers).items():
            out[key] = param.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
        return out

    def payload_spec(self, model: nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
        layers = self._layers(model)
        spec = {
            f"{path}.{DELTA_SUFFIX}": (tuple(_base_weight(layer).shape), "float32")
            for path, layer in layers.items()
        }
        for key, param in self._others(model, layers).items():
            spec[key] = (tuple(param.shape), "float32")
        return spec

    def trainable_parameters(self, model: nn.Module) -> int:
        """Scalars a client *sends* (dense); the factors it trains are fewer."""
        return sum(int(np.prod(shape)) for shape, _ in self.payload_spec(model).values())

    def load_payload(self, model: nn.Module, payload: Mapping[str, np.ndarray]) -> None:
        """Merge each ``delta_weight`` into the frozen base and re-initialise the factors.

        Afterwards every adapted layer computes with ``W0 + delta``. Validation is strict
        and complete before anything is written (as :meth:`TuningMethod.load_payload`).

        Raises
        ------
        PayloadError
            On a missing or unexpected key, a wrong shape, a non-numeric dtype or a
            non-finite value; the message names the key.
        """
        layers, state = self._layers(model), self._state(model)
        others = self._others(model, layers)
        spec = self.payload_spec(model)
        arrays = check_payload(self.name, payload, {k: shape for k, (shape, _) in spec.items()})
        svd = getattr(self.inner, "init_lora_weights", True) == "pissa"
        with torch.no_grad():
            for path, layer in layers.items():
                init = state[path]
                weight = _base_weight(layer)
                a, b, scale = _factors(layer)
                delta = torch.from_numpy(np.ascontiguousarray(arrays[f"{path}.{DELTA_SUFFIX}"]))
                target = init.w0.to(device=weight.device, dtype=torch.float32) + delta.to(
                    device=weight.device, dtype=torch.float32
                )
                if svd:
                    new_a, new_b = _pissa_factors(target, a.shape[0], scale)
                else:
                    new_a = init.a0.to(device=weight.device, dtype=torch.float32)
                    new_b = init.b0.to(device=weight.device, dtype=torch.float32)
                a.copy_(new_a.to(a))
                b.copy_(new_b.to(b))
                weight.copy_((target - scale * (new_b @ new_a)).to(weight))
            for key, param in others.items():
                param.copy_(torch.from_numpy(np.ascontiguousarray(arrays[key])).to(param))

    # --- export ---------------------------------------------------------------------

    def export(self, model: nn.Module, out_dir: Path) -> ExportInfo:
        """Write the dense payload as ``adapter.safetensors`` (format ``securefed-dense``).

        :func:`securefed.methods.load_exported` rebuilds it: it applies the inner method
        densified and loads the deltas, which does not depend on the apply seed.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = self.payload(model)
        weights = str(out_dir / export_lib.SAFETENSORS_WEIGHTS)
        save_numpy(payload, weights, metadata={"format": "securefed", "dense": "true"})
        extra = {"inner_method": self.inner.name, "inner_params": self.inner.params()}
        return export_lib.finish_export(self, out_dir, DENSE_FORMAT, payload, extra=extra)


def load_dense_export(
    base_model: PreTrainedModel, arch: Architecture, adapter_dir: Path, meta: Mapping[str, Any]
) -> nn.Module:
    """Loader of the ``securefed-dense`` export format (registered in ``export.LOADERS``)."""
    if "inner_method" not in meta or "inner_params" not in meta:
        raise PayloadError(f"dense export {adapter_dir} lacks 'inner_method'/'inner_params'")
    method = densify(create_method(meta["inner_method"], **meta["inner_params"]))
    model = method.apply(base_model, arch)
    method.load_payload(model, load_numpy(str(Path(adapter_dir) / export_lib.SAFETENSORS_WEIGHTS)))
    return model


export_lib.LOADERS.setdefault(DENSE_FORMAT, load_dense_export)


def _factors(layer: LoraLinear) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(A, B, s)`` of the default adapter: the factor weights and PEFT's scaling."""
    a = cast(torch.Tensor, layer.lora_A[ADAPTER].weight)
    b = cast(torch.Tensor, layer.lora_B[ADAPTER].weight)
    return a, b, float(layer.scaling[ADAPTER])


def _base_weight(layer: LoraLinear) -> torch.Tensor:
    """The frozen ``(out, in)`` weight of the wrapped ``nn.Linear``."""
    return cast(torch.Tensor, layer.get_base_layer().weight)


def _effective(layer: LoraLinear) -> torch.Tensor:
    """``W_eff = base + s·B·A`` in float32 (no grad is taken through it)."""
    a, b, scale = _factors(layer)
    weight = _base_weight(layer).to(torch.float32)
    return weight + scale * (b.to(torch.float32) @ a.to(torch.float32))


def _pissa_factors(weight: torch.Tensor, r: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FeDeRA/PiSSA factors of ``weight``: ``A = sqrt(S_r/s) V_rᵀ``, ``B = U_r sqrt(S_r/s)``.

    The same formula as PEFT 0.21's ``pissa_init`` (see :mod:`securefed.methods.federa`).
    """
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = torch.sqrt(s[:r] / scale)
    return root[:, None] * vh[:r], u[:, :r] * root[None, :]
