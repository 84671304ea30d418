"""Tuning methods: which tensors of a backbone a client trains, sends and exports.

Every method is registered by name in :data:`METHODS` and built with
:func:`create_method`::

    method = create_method("lora", r=8)
    model = method.apply(backbone, get_architecture("bert"), seed=0)
    payload = method.payload(model)          # dict[str, np.ndarray], trainables only
    method.load_payload(model, payload)
    method.export(model, out_dir)            # PEFT format or securefed safetensors
    model = load_exported(fresh_backbone, arch, out_dir)

Registered methods: ``full``, ``head``, ``bitfit``, ``prompt``, ``prefix``, ``ia3``,
``adapter``, ``lora``, ``ffa-lora``, ``federa``. :func:`densify` wraps ``lora`` or
``federa`` so that clients send the dense update ``B·A`` (exact under plain sums).
"""

from __future__ import annotations

import importlib

from securefed.methods.base import (
    Aggregation,
    AggregationSemantics,
    ExportInfo,
    TuningMethod,
)
from securefed.methods.export import load_exported
from securefed.methods.registry import METHODS, create_method, method_params, register_method

#: Method modules; importing one registers its method, so this is the registry's order.
METHOD_MODULES = (
    "full",
    "head",
    "bitfit",
    "prompt",
    "prefix",
    "ia3",
    "adapter",
    "lora",
    "ffa_lora",
    "federa",
)
for _module in METHOD_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

# The dense wrapper of factor-wise methods (imported after them; registers its export loader).
from securefed.methods.dense import DenseFactorised, densify  # noqa: E402

__all__ = [
    "METHODS",
    "METHOD_MODULES",
    "Aggregation",
    "AggregationSemantics",
    "DenseFactorised",
    "ExportInfo",
    "TuningMethod",
    "create_method",
    "densify",
    "load_exported",
    "method_params",
    "register_method",
]
