"""One table of cases run over every registered tuning method on tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel

from securefed.exceptions import PayloadError
from securefed.methods import METHODS, TuningMethod, create_method, load_exported
from securefed.methods.export import METADATA_FILE, PEFT_FORMAT, SAFETENSORS_FORMAT
from tests.methods.conftest import Backbone, logits

#: Small-but-default-shaped hyper-parameters, so the suite stays fast.
PARAMS: dict[str, dict[str, object]] = {
    "prompt": {"num_tokens": 4},
    "prefix": {"num_tokens": 4},
    "adapter": {"bottleneck": 8},
    "lora": {"r": 4},
    "ffa-lora": {"r": 4},
    "federa": {"r": 4},
}

#: Every method on BERT and ViT, plus a few on RoBERTa, DINOv2 and CLIP.
EXTRA = {
    "roberta": ["prompt", "prefix", "ia3", "adapter", "federa", "bitfit"],
    "dinov2": ["prompt", "prefix", "adapter", "lora"],
    "clip": ["prompt", "prefix", "ia3", "adapter", "ffa-lora"],
}
CASES = [(m, b) for b in ("bert", "vit") for m in METHODS.names()] + [
    (m, b) for b, methods in EXTRA.items() for m in methods
]
IDS = [f"{m}-{b}" for m, b in CASES]

#: Methods whose model output must equal the untuned model's at init.
IDENTITY_AT_INIT = ["federa", "lora", "ffa-lora", "adapter", "ia3"]


def build(name: str, model_type: str, seed: int = 0):
    backbone = Backbone(model_type)
    method = create_method(name, **PARAMS.get(name, {}))
    model = method.apply(backbone.model(), backbone.arch, seed=seed)
    return method, model, backbone


def perturbed(payload: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0.0, 0.05, v.shape)).astype(np.float32) for k, v in payload.items()}


def is_head(key: str, backbone: Backbone) -> bool:
    parts = key.split(".")
    return any(h.split(".")[0] in parts for h in backbone.arch.head)


def frozen_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize(("name", "model_type"), CASES, ids=IDS)
def test_payload_is_exactly_the_trainables(name: str, model_type: str) -> None:
    method, model, backbone = build(name, model_type)
    payload = method.payload(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert payload
    assert set(payload) == trainable
    assert not set(payload) & frozen
    assert all(v.dtype == np.float32 for v in payload.values())
    assert any(is_head(k, backbone) for k in payload), "the head must be sent"
    spec = method.payload_spec(model)
    assert spec == {k: (v.shape, "float32") for k, v in payload.items()}
    assert method.trainable_parameters(model) == sum(v.size for v in payload.values())
    assert method.payload_nbytes(model) == sum(v.nbytes for v in payload.values())
    if name != "full":
        assert frozen, "only full fine-tuning trains everything"
        assert any(not is_head(k, backbone) for k in payload) or name == "head"


@pytest.mark.parametrize(("name", "model_type"), CASES, ids=IDS)
def test_payload_round_trip_and_is_live(name: str, model_type: str) -> None:
    method, model, backbone = build(name, model_type)
    before = logits(model, backbone)
    payload = method.payload(model)
    if name != "head":  # the method's own tensors, not only the head, must reach the output
        body = {k: v for k, v in perturbed(payload).items() if not is_head(k, backbone)}
        method.load_payload(model, {**payload, **body})
        assert not torch.allclose(before, logits(model, backbone), atol=1e-6)
    target = perturbed(payload, seed=1)
    method.load_payload(model, target)
    after = method.payload(model)
    assert after.keys() == target.keys()
    for key in target:
        np.testing.assert_array_equal(after[key], target[key], err_msg=key)
    assert not torch.allclose(before, logits(model, backbone))


@pytest.mark.parametrize("defect", ["missing", "extra", "shape", "nan"])
@pytest.mark.parametrize(
    ("name", "model_type"), CASES[: len(METHODS) * 2], ids=IDS[: len(METHODS) * 2]
)
def test_load_payload_rejects_malformed(name: str, model_type: str, defect: str) -> None:
    method, model, _ = build(name, model_type)
    payload = method.payload(model)
    key = sorted(payload)[-1]
    bad = dict(perturbed(payload))
    if defect == "missing":
        del bad[key]
    elif defect == "extra":
        key = "not.a.parameter"
        bad[key] = np.zeros(3, np.float32)
    elif defect == "shape":
        bad[key] = np.zeros((*payload[key].shape, 2), np.float32)
    else:
        bad[key] = bad[key].copy()
        bad[key].flat[0] = np.nan
    with pytest.raises(PayloadError, match=key.replace(".", r"\.")):
        method.load_payload(model, bad)
    untouched = method.payload(model)
    for k in payload:
        np.testing.assert_array_equal(untouched[k], payload[k])


@pytest.mark.parametrize(
    ("name", "model_type"), [c for c in CASES if c[0] in IDENTITY_AT_INIT], ids=str
)
def test_output_unchanged_at_init(name: str, model_type: str) -> None:
    backbone = Backbone(model_type)
    reference = logits(backbone.model(), backbone)
    _, model, _ = build(name, model_type)
    torch.testing.assert_close(logits(model, backbone), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "model_type"), CASES, ids=IDS)
def test_same_seed_same_initial_payload(name: str, model_type: str) -> None:
    method, first, _ = build(name, model_type, seed=7)
    _, second, _ = build(name, model_type, seed=7)
    a, b = method.payload(first), method.payload(second)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize(("name", "model_type"), CASES, ids=IDS)
def test_training_steps_really_change_the_adapter(name: str, model_type: str) -> None:
    # Guards against silent corruption such as Opacus #820: the method's own tensors, not
    # only the head, must move, and nothing frozen may.
    method, model, backbone = build(name, model_type)
    before, frozen_before = method.payload(model), frozen_state(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        out = model(**backbone.inputs())
        torch.nn.functional.cross_entropy(out.logits, backbone.labels()).backward()
        optimizer.step()
    after = method.payload(model)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert any(is_head(k, backbone) for k in changed)
    if name != "head":
        assert any(not is_head(k, backbone) for k in changed), sorted(changed)
    for key, value in frozen_state(model).items():
        torch.testing.assert_close(value, frozen_before[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(("name", "model_type"), CASES, ids=IDS)
def test_export_then_load_reproduces_logits(name: str, model_type: str, tmp_path: Path) -> None:
    method, model, backbone = build(name, model_type)
    method.load_payload(model, perturbed(method.payload(model)))  # stands in for training
    expected = logits(model, backbone)
    info = method.export(model, tmp_path)
    assert (tmp_path / METADATA_FILE).is_file()
    native = method.peft_native(backbone.arch)
    assert info.format == (PEFT_FORMAT if native else SAFETENSORS_FORMAT)
    assert info.num_tensors > 0
    rebuilt = load_exported(backbone.model(), backbone.arch, tmp_path)
    torch.testing.assert_close(logits(rebuilt, backbone), expected, rtol=1e-5, atol=1e-5)
    if native:  # stock PEFT, on an unmodified base, must agree too
        stock = PeftModel.from_pretrained(backbone.model(), str(tmp_path))
        torch.testing.assert_close(logits(stock, backbone), expected, rtol=1e-5, atol=1e-5)


def test_every_method_is_in_the_table() -> None:
    assert {m for m, b in CASES if b == "bert"} == set(METHODS.names())
    assert {m for m, b in CASES if b == "vit"} == set(METHODS.names())


def test_methods_are_tuning_methods() -> None:
    for name in METHODS:
        assert issubclass(METHODS.get(name), TuningMethod)
        assert METHODS.get(name).name == name
