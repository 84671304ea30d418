"""The interface every tuning method implements, and its aggregation semantics.

A tuning method decides which tensors of a pre-trained Transformer a client trains and
sends. Its *payload* is a ``dict[str, np.ndarray]`` of exactly those tensors, keyed by a
stable name, so that strategies aggregate by key and never by list position.

How a payload may be aggregated is part of the method: for most methods the weighted mean
of each tensor *is* the intended update, which is exact under the plain sums of secure
aggregation. LoRA's factors are the exception: the server can only average ``A`` and ``B``
separately, and ``mean(B)·mean(A) != mean(B·A)`` (the discordance studied by FFA-LoRA,
arXiv 2403.12313).
"""

from __future__ import annotations

import dataclasses
import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from securefed.exceptions import ConfigError, MethodError, PayloadError
from securefed.methods._modules import unwrap
from securefed.models.architecture import Architecture

__all__ = [
    "LINEAR_SEMANTICS",
    "Aggregation",
    "AggregationSemantics",
    "ExportInfo",
    "ModalityBackend",
    "TuningMethod",
    "backend_for",
    "check_payload",
    "require_positive_int",
]


class Aggregation(enum.Enum):
    """How the server may combine client payloads of a method."""

    #: The weighted mean of each tensor is the intended update; exact under plain sums
    #: (secure aggregation).
    LINEAR = "linear"
    #: LoRA ``A`` and ``B`` are averaged separately; ``mean(B)·mean(A) != mean(B·A)``,
    #: so the result is inexact under sums.
    FACTORWISE = "factorwise"


@dataclass(frozen=True)
class AggregationSemantics:
    """What averaging a method's payload means.

    Attributes
    ----------
    kind : Aggregation
        Linear in the payload tensors, or factor-wise (LoRA).
    exact_under_sum : bool
        Whether the weighted mean computed from plain sums (as secure aggregation gives
        them) equals the mean of the clients' model updates.
    description : str
        One sentence for reports and error messages.
    """

    kind: Aggregation
    exact_under_sum: bool
    description: str


LINEAR_SEMANTICS = AggregationSemantics(
    Aggregation.LINEAR,
    exact_under_sum=True,
    description="the weighted mean of each trained tensor is the aggregated update",
)


@dataclass(frozen=True)
class ExportInfo:
    """What :meth:`TuningMethod.export` wrote.

    Attributes
    ----------
    method : str
        Registered method name.
    format : str
        ``"peft"`` (loadable by stock ``PeftModel.from_pretrained``) or
        ``"securefed-safetensors"`` (see :mod:`securefed.methods.export`).
    directory : Path
        The export directory.
    files : tuple[str, ...]
        File names written inside ``directory``.
    num_tensors : int
        Tensors in the weight file.
    nbytes : int
        Bytes of tensor data in the weight file.
    """

    method: str
    format: str
    directory: Path
    files: tuple[str, ...]
    num_tensors: int
    nbytes: int


def require_positive_int(field: str, value: object) -> None:
    """Raise :class:`ConfigError` naming ``field`` unless ``value`` is an int > 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{field} must be a positive integer, got {value!r}")


class ModalityBackend(Protocol):
    """One modality's implementation of a virtual-token method (prompt or prefix tuning).

    Prompt and prefix tuning are built by PEFT on text backbones and in-house on image
    backbones; each method keeps a ``dict`` from ``Architecture.modality`` to a backend.
    """

    @property
    def peft_native(self) -> bool:
        """Whether the backend builds a ``PeftModel`` (exported in PEFT's format)."""
        ...

    def apply(self, model: PreTrainedModel, arch: Architecture, num_tokens: int) -> nn.Module:
        """Add ``num_tokens`` learned tokens, freeze everything else but the head."""
        ...


def backend_for(
    backends: dict[str, ModalityBackend], arch: Architecture, method: str
) -> ModalityBackend:
    """Look up the backend for ``arch.modality``, naming the method if there is none."""
    try:
        return backends[arch.modality]
    except KeyError:
        raise MethodError(
            f"{method}: no implementation for modality {arch.modality!r}; "
            f"available: {', '.join(sorted(backends))}"
        ) from None



def check_payload(method: str, payload: Mapping[str, np.ndarray],
                  shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Validate a payload against the expected keys and shapes; return it as arrays.

    Raises
    ------
    PayloadError
        On a missing or unexpected key, a wrong shape, a non-numeric dtype or a
        non-finite value; the message names ``method`` and the key.
    """
    missing = sorted(set(shapes) - set(payload))
    extra = sorted(set(payload) - set(shapes))
    if missing:
        raise PayloadError(f"{method}: payload lacks key(s) {missing}")
    if extra:
        raise PayloadError(f"{method}: payload has unexpected key(s) {extra}")
    arrays: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        array = np.asarray(payload[key])
        if array.shape != tuple(shape):
            raise PayloadError(
                f"{method}: payload key {key!r} has shape {array.shape}, expected {tuple(shape)}"
            )
        if array.dtype.kind not in "fiu":
            raise PayloadError(f"{method}: payload key {key!r} has non-numeric dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise PayloadError(f"{method}: payload key {key!r} has non-finite values")
        arrays[key] = array
    return arrays

class TuningMethod(ABC):
    """A way of choosing, initialising and shipping the trainable part of a backbone.

    Subclasses are frozen dataclasses holding the method's hyper-parameters (validated in
    ``__post_init__``) and implement :meth:`_apply`. Instances are registered by
    :data:`~securefed.methods.registry.METHODS` and built by
    :func:`~securefed.methods.registry.create_method`.
    """

    name: ClassVar[str]
    semantics: ClassVar[AggregationSemantics] = LINEAR_SEMANTICS

    # --- building -------------------------------------------------------------------

    def apply(self, model: PreTrainedModel, arch: Architecture, *, seed: int = 0) -> nn.Module:
        """Freeze all but this method's parameters and return the tuned model.

        The model is modified in place; the returned module may wrap it (a ``PeftModel``).
        All random initialisation runs under ``torch.manual_seed(seed)`` in a forked RNG
        state, so every client that applies the method with the same seed to the same
        backbone holds identical initial trainables, and the caller's RNG is untouched.

        Raises
        ------
        MethodError
            If ``model`` is not of the family ``arch`` describes, or the method cannot be
            applied to it.
        """
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type != arch.model_type:
            raise MethodError(
                f"{self.name}: architecture is {arch.model_type!r} but the model is {model_type!r}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tuned = self._apply(model, arch)
        if not any(p.requires_grad for p in tuned.parameters()):
            raise MethodError(f"{self.name}: nothing is trainable after applying the method")
        return tuned

    @abstractmethod
    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        """Method-specific part of :meth:`apply` (already seeded)."""

    def peft_native(self, arch: Architecture) -> bool:
        """Whether this method is built by PEFT (and exported in its format) for ``arch``."""
        return False

    def params(self) -> dict[str, Any]:
        """The hyper-parameters as JSON-ready values (``create_method(name, **params)``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    # --- payload --------------------------------------------------------------------

    def _trainable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}

    def payload(self, model: nn.Module) -> dict[str, np.ndarray]:
        """Float32 numpy copies of exactly the trainable tensors, keyed by parameter name."""
        return {
            name: param.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
            for name, param in self._trainable(model).items()
        }

    def payload_spec(self, model: nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
        """Key → (shape, dtype) of the payload, for server-side validation."""
        return {n: (tuple(p.shape), "float32") for n, p in self._trainable(model).items()}

    def trainable_parameters(self, model: nn.Module) -> int:
        """Number of scalars a client trains and sends."""
        return sum(p.numel() for p in self._trainable(model).values())

    def payload_nbytes(self, model: nn.Module) -> int:
        """Size of the float32 payload in bytes (sum of ``nbytes``)."""
        return 4 * self.trainable_parameters(model)

    def load_payload(self, model: nn.Module, payload: Mapping[str, np.ndarray]) -> None:
        """Copy ``payload`` into the trainable tensors of ``model``, in place.

        Validation is strict and happens before anything is copied, so a rejected payload
        leaves the model untouched.

        Raises
        ------
        PayloadError
            On a missing or unexpected key, a wrong shape, a non-numeric dtype or a
            non-finite value; the message names the key.
        """
        params = self._trainable(model)
        arrays = check_payload(self.name, payload,
                               {k: tuple(p.shape) for k, p in params.items()})
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(torch.from_numpy(np.ascontiguousarray(arrays[key])).to(param))

    # --- export ---------------------------------------------------------------------

    def export(self, model: nn.Module, out_dir: Path) -> ExportInfo:
        """Write the tuned part of ``model`` to ``out_dir``; see :mod:`securefed.methods.export`."""
        from securefed.methods import export

        return export.export_model(self, model, Path(out_dir))
