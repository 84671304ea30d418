"""Small helpers around Hugging Face ``transformers`` shared by the model modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "quiet_transformers"]

#: ImageNet per-channel statistics, the default normalisation of image backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars inside the block.

    The "newly initialized weights" report is expected whenever a task head is added;
    callers that need to know which keys were missing ask ``from_pretrained`` for its
    loading info instead. Verbosity and the progress-bar switch are restored on exit.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
