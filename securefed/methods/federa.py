"""FeDeRA: LoRA initialised from the SVD of the pre-trained weight (arXiv 2404.18848).

For each targeted weight ``W = U S Vᵀ`` (full, deterministic SVD) FeDeRA sets
``B = U_r sqrt(S_r / s)`` and ``A = sqrt(S_r / s) V_rᵀ`` with ``s = alpha / r`` the LoRA
scaling, and writes the residual ``W - s·B A`` into the frozen base weight. The model output
is unchanged at init, and, because the SVD is deterministic, every client starts from the
same factors. This is exactly PEFT's ``init_lora_weights="pissa"`` (PiSSA, arXiv
2404.02948; checked against ``peft/tuners/lora/layer.py::pissa_init`` in PEFT 0.21.2).

Export. The trained adapter only makes sense on the *residual* base. To get an adapter
for the original weights we use PiSSA's conversion ``ΔW = s·(B A − B₀ A₀)
= s·[B | −B₀]·[A ; A₀]``, a plain LoRA of rank ``2r`` and alpha ``2·alpha`` (same scaling).
PEFT offers this through ``save_pretrained(path_initial_model_for_weight_conversion=...)``,
but in PEFT 0.21.2 that path keeps only ``lora_A``/``lora_B`` tensors and silently drops
``modules_to_save`` (our trained head), so the conversion is done here, the same way, with
the head kept. Stock ``PeftModel.from_pretrained`` loads the result on an unmodified base.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from securefed.exceptions import MethodError
from securefed.methods import export as export_lib
from securefed.methods._modules import unwrap
from securefed.methods.base import ExportInfo
from securefed.methods.lora import InitLoraWeights, LoRA
from securefed.methods.registry import register_method
from securefed.models.architecture import Architecture

__all__ = ["INITIAL_ADAPTER_ATTR", "FeDeRA"]

#: Attribute of the PeftModel holding the initial (B₀, A₀) factors, keyed as in PEFT files.
INITIAL_ADAPTER_ATTR = "securefed_initial_adapter"


@register_method("federa")
@dataclass(frozen=True)
class FeDeRA(LoRA):
    """LoRA initialised by SVD of the pre-trained weights (FeDeRA, arXiv 2404.18848).

    Parameters are those of :class:`~securefed.methods.lora.LoRA`; ``r`` may not exceed
    the smaller dimension of any targeted weight.
    """

    name: ClassVar[str] = "federa"
    init_lora_weights: ClassVar[InitLoraWeights] = "pissa"

    def _apply(self, model: PreTrainedModel, arch: Architecture) -> nn.Module:
        config = self.lora_config(arch)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and check_target_module_exists(config, name):
                if self.r > min(module.weight.shape):
                    raise MethodError(
                        f"federa: r={self.r} exceeds the rank of {name} "
                        f"{tuple(module.weight.shape)}"
                    )
                if module.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                    raise MethodError(f"federa: {name} has unsupported dtype {module.weight.dtype}")
        peft_model = get_peft_model(model, config)
        initial = {
            key: tensor.detach().clone()
            for key, tensor in get_peft_model_state_dict(peft_model).items()
            if ".lora_A." in key or ".lora_B." in key
        }
        setattr(peft_model, INITIAL_ADAPTER_ATTR, initial)
        return peft_model

    def export(self, model: nn.Module, out_dir: Path) -> ExportInfo:
        """Write a plain-LoRA PEFT adapter that applies to the *original* base weights."""
        peft_model = unwrap(model)
        initial: dict[str, torch.Tensor] | None = getattr(peft_model, INITIAL_ADAPTER_ATTR, None)
        if not isinstance(peft_model, PeftModel) or initial is None:
            raise MethodError("federa: export needs the PeftModel returned by FeDeRA.apply")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(peft_model)
        converted: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            if ".lora_A." in key:
                tensor = torch.cat([tensor, initial[key].to(tensor)], dim=0)
            elif ".lora_B." in key:
                tensor = torch.cat([tensor, -initial[key].to(tensor)], dim=1)
            converted[key] = tensor.detach().to("cpu").contiguous()
        config = copy.deepcopy(peft_model.peft_config["default"])
        if not isinstance(config, LoraConfig):
            raise MethodError(f"federa: expected a LoRA adapter, found {type(config).__name__}")
        config.init_lora_weights = True
        config.r *= 2
        config.lora_alpha *= 2
        config.inference_mode = True
        config.save_pretrained(str(out_dir))
        save_file(converted, str(out_dir / export_lib.PEFT_WEIGHTS), metadata={"format": "pt"})
        return export_lib.finish_export(
            self, out_dir, export_lib.PEFT_FORMAT, converted, extra={"converted_from": "pissa"}
        )
