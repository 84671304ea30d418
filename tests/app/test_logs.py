"""Flower's log lines go to flower.log; known third-party warnings are silenced."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from securefed.app.logs import KNOWN_WARNINGS, pythonwarnings, route_logs, silence_known_warnings


def _peft_model(backbone):
    from peft import LoraConfig, get_peft_model

    from securefed.models import build_classifier, resolve_backbone

    base = build_classifier(resolve_backbone(str(backbone)), 3)
    return get_peft_model(base, LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))


def test_the_transformers_future_warning_of_every_model_load_is_silenced(tiny_backbones):
    with warnings.catch_warnings(record=True) as loud:
        warnings.simplefilter("always")
        _peft_model(tiny_backbones["bert"])
    assert any("is_gradient_checkpointing" in str(w.message) for w in loud)  # it is real
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        silence_known_warnings()
        _peft_model(tiny_backbones["bert"])
        warnings.warn("a warning of ours", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in quiet] == ["a warning of ours"]  # only the known ones


def test_child_processes_get_the_same_filters() -> None:
    env = pythonwarnings("error::ResourceWarning")
    assert env.startswith("error::ResourceWarning,ignore:")
    assert env.count(",ignore:") == len(KNOWN_WARNINGS)
    code = ("import warnings\n"
            "warnings.warn_explicit('`is_gradient_checkpointing` is deprecated and will be "
            "removed', FutureWarning, 'm.py', 1, module='transformers.modeling_utils')\n"
            "warnings.warn_explicit('Tip: In future versions of Ray', FutureWarning, "
            "'w.py', 1, module='ray._private.worker')\n"
            "warnings.warn_explicit('other', FutureWarning, 'x.py', 1, module='x')\n")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONWARNINGS": env},
                         capture_output=True, text=True, check=True)
    assert "is_gradient_checkpointing" not in out.stderr and "Ray" not in out.stderr
    assert "other" in out.stderr


def test_route_logs_moves_flowers_console_lines_to_the_file_and_back(tmp_path) -> None:
    from flwr.common.logger import FLOWER_LOGGER as flwr
    before = list(flwr.handlers)
    own_level = logging.getLogger("securefed").level
    with route_logs(tmp_path / "flower.log"):
        assert not any(type(h) is not logging.FileHandler and isinstance(
            h, logging.StreamHandler) for h in flwr.handlers)
        flwr.info("[ROUND 1/3]")
        logging.getLogger("securefed.app.server_app").info("round 1: acc 0.9")
        warnings.warn("a hook warning of torch", UserWarning, stacklevel=1)
    assert flwr.handlers == before
    assert warnings.showwarning is not logging._showwarning  # type: ignore[attr-defined]
    assert logging.getLogger("securefed").level == own_level
    text = (tmp_path / "flower.log").read_text()
    assert "[ROUND 1/3]" in text and "round 1: acc 0.9" in text
    assert "a hook warning of torch" in text
