"""Shared glue for methods that PEFT builds (private).

PEFT picks the wrapper class from ``task_type``: text backbones use ``SEQ_CLS`` (so stock
``PeftModel.from_pretrained`` rebuilds a ``PeftModelForSequenceClassification``); image
backbones have no matching PEFT task and use ``None`` (a plain ``PeftModel``). The task
head is always passed in ``modules_to_save`` so that it is trained, sent and exported.
"""

from __future__ import annotations

from peft import PeftModel, TaskType
from torch import nn

from securefed.models.architecture import Architecture

__all__ = ["TASK_TYPES", "is_peft_model", "task_type"]

#: PEFT ``task_type`` by backbone modality.
TASK_TYPES: dict[str, TaskType | None] = {"text": TaskType.SEQ_CLS, "image": None}


def task_type(arch: Architecture) -> TaskType | None:
    """The PEFT task type for ``arch``'s modality."""
    return TASK_TYPES[arch.modality]


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT wrapper (exported with ``save_pretrained``)."""
    return isinstance(model, PeftModel)
