"""The dense payload form of factor-wise methods (securefed.methods.dense)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from securefed.exceptions import ConfigError, PayloadError
from securefed.methods import (
    Aggregation,
    DenseFactorised,
    create_method,
    densify,
    load_exported,
)
from securefed.methods.dense import DELTA_SUFFIX, DENSE_FORMAT
from tests.methods.conftest import Backbone, logits

FACTORWISE = ["lora", "federa"]
R = 4
SEED = 3


def _build(name: str, model_type: str = "bert") -> tuple[Backbone, DenseFactorised, nn.Module]:
    backbone = Backbone(model_type)
    method = densify(create_method(name, r=R))
    return backbone, method, method.apply(backbone.model(), backbone.arch, seed=SEED)


def _lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def _perturb(model: nn.Module, rng: np.random.Generator, std: float = 0.3) -> None:
    """A stand-in for local training: random moves of every trainable tensor."""
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.from_numpy(rng.normal(0, std, param.shape)).to(param))


def _effective(layer: LoraLinear) -> torch.Tensor:
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return layer.base_layer.weight + layer.scaling["default"] * (b @ a)


def _mean(payloads: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.mean([p[k] for p in payloads], axis=0) for k in payloads[0]}


@pytest.mark.parametrize("name", ["ffa-lora", "head", "bitfit", "full"])
def test_refuses_non_factorwise_methods(name: str) -> None:
    with pytest.raises(ConfigError, match=r"densifiable: lora, federa$"):
        densify(create_method(name))


@pytest.mark.parametrize("name", FACTORWISE)
def test_identity_and_semantics(name: str) -> None:
    method = densify(create_method(name, r=R))
    assert method.name == f"{name}+dense"
    assert method.params() == {**create_method(name, r=R).params(), "dense": True}
    assert method.semantics.kind is Aggregation.LINEAR
    assert method.semantics.exact_under_sum
    assert "B·A" in method.semantics.description


@pytest.mark.parametrize(("name", "model_type"), [("lora", "bert"), ("federa", "vit")])
def test_payload_shapes_sizes_and_unchanged_output(name: str, model_type: str) -> None:
    backbone, method, model = _build(name, model_type)
    np.testing.assert_allclose(
        logits(model, backbone), logits(backbone.model(), backbone), atol=1e-5
    )
    payload = method.payload(model)
    layers = _lora_layers(model)
    assert len(layers) == 4  # query + value in two blocks
    for path, layer in layers.items():
        delta = payload[f"{path}.{DELTA_SUFFIX}"]
        assert delta.dtype == np.float32
        assert delta.shape == tuple(layer.base_layer.weight.shape)
        assert not delta.any(), "the cumulative update is zero at init"
    inner_payload = method.inner.payload(model)
    head = {k for k in inner_payload if ".lora_A." not in k and ".lora_B." not in k}
    assert head and all("classifier" in k for k in head)
    assert set(payload) == head | {f"{p}.{DELTA_SUFFIX}" for p in layers}
    for key in head:
        np.testing.assert_array_equal(payload[key], inner_payload[key])
    assert method.payload_spec(model) == {k: (v.shape, "float32") for k, v in payload.items()}
    assert method.payload_nbytes(model) == sum(v.nbytes for v in payload.values())
    assert method.payload_nbytes(model) > method.inner.payload_nbytes(model)


@pytest.mark.parametrize("name", FACTORWISE)
def test_round_trip_is_identity_on_logits(name: str) -> None:
    backbone, method, model = _build(name)
    _perturb(model, np.random.default_rng(0))
    before = logits(model, backbone)
    payload = method.payload(model)
    method.load_payload(model, payload)
    np.testing.assert_allclose(logits(model, backbone), before, atol=1e-5)
    again = method.payload(model)
    for key, value in payload.items():
        np.testing.assert_allclose(again[key], value, atol=1e-5)
    if name == "lora":  # factors restart from the seeded init: B = 0, A = A0
        fresh = method.apply(backbone.model(), backbone.arch, seed=SEED)
        for path, layer in _lora_layers(model).items():
            assert not layer.lora_B["default"].weight.any()
            torch.testing.assert_close(
                layer.lora_A["default"].weight, _lora_layers(fresh)[path].lora_A["default"].weight
            )


@pytest.mark.parametrize("name", FACTORWISE)
def test_mean_of_dense_payloads_is_exact_and_factorwise_is_not(name: str) -> None:
    backbone, method, start = _build(name)
    rng = np.random.default_rng(1)
    clients = []
    for _ in range(3):
        client = copy.deepcopy(start)
        _perturb(client, rng)
        clients.append(client)

    # reference: the original backbone with W0 + mean_i(W_eff_i − W0) and the mean head
    reference = backbone.model()
    start_layers = _lora_layers(start)
    with torch.no_grad():
        for path, layer in start_layers.items():
            w0 = _effective(layer)
            update = torch.stack([_effective(_lora_layers(c)[path]) - w0 for c in clients])
            target = reference.get_submodule(path.removeprefix("base_model.model."))
            target.weight.add_(update.mean(0))
        heads = [dict(c.named_parameters()) for c in clients]
        for name_, param in reference.classifier.named_parameters():
            key = f"base_model.model.classifier.modules_to_save.default.{name_}"
            param.copy_(torch.stack([h[key] for h in heads]).mean(0))
    expected = logits(reference, backbone)

    dense = method.apply(backbone.model(), backbone.arch, seed=SEED)
    method.load_payload(dense, _mean([method.payload(c) for c in clients]))
    np.testing.assert_allclose(logits(dense, backbone), expected, atol=1e-5)

    inner = method.inner
    factorwise = inner.apply(backbone.model(), backbone.arch, seed=SEED)
    inner.load_payload(factorwise, _mean([inner.payload(c) for c in clients]))
    assert (logits(factorwise, backbone) - expected).abs().max() > 1e-4


def _corrupt(payload: dict[str, np.ndarray], how: str) -> tuple[dict[str, np.ndarray], str]:
    key = next(k for k in sorted(payload) if k.endswith(DELTA_SUFFIX))
    bad = dict(payload)
    if how == "missing":
        del bad[key]
    elif how == "extra":
        key = "bert.bogus.delta_weight"
        bad[key] = np.zeros((2, 2), np.float32)
    elif how == "shape":
        bad[key] = payload[key][:, :-1]
    elif how == "nan":
        bad[key] = payload[key].copy()
        bad[key][0, 0] = np.nan
    else:
        bad[key] = np.full(payload[key].shape, "x")
    return bad, key


@pytest.mark.parametrize("how", ["missing", "extra", "shape", "nan", "dtype"])
def test_strict_load_names_the_key_and_leaves_model_untouched(how: str) -> None:
    backbone, method, model = _build("lora")
    _perturb(model, np.random.default_rng(2))
    before = logits(model, backbone)
    payload = method.payload(model)
    bad, key = _corrupt({k: v * 0.5 for k, v in payload.items()}, how)
    with pytest.raises(PayloadError, match=key.replace(".", r"\.")):
        method.load_payload(model, bad)
    torch.testing.assert_close(logits(model, backbone), before)


@pytest.mark.parametrize("name", FACTORWISE)
def test_export_reloads_the_logits(name: str, tmp_path: Path) -> None:
    backbone, method, model = _build(name)
    _perturb(model, np.random.default_rng(4))
    info = method.export(model, tmp_path)
    assert info.format == DENSE_FORMAT
    assert info.nbytes == method.payload_nbytes(model)
    meta = json.loads((tmp_path / "securefed_method.json").read_text())
    assert meta["inner_method"] == name
    assert meta["method"] == f"{name}+dense"
    reloaded = load_exported(backbone.model(), backbone.arch, tmp_path)
    np.testing.assert_allclose(logits(reloaded, backbone), logits(model, backbone), atol=1e-5)


def test_sgd_step_moves_the_dense_update() -> None:
    backbone, method, model = _build("lora")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    loss = model(**backbone.inputs(), labels=backbone.labels()).loss
    loss.backward()
    optimizer.step()
    payload = method.payload(model)
    deltas = [v for k, v in payload.items() if k.endswith(DELTA_SUFFIX)]
    assert any(np.abs(d).max() > 0 for d in deltas)
    for path, layer in _lora_layers(model).items():
        expected = layer.scaling["default"] * (
            layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        )
        np.testing.assert_allclose(
            payload[f"{path}.{DELTA_SUFFIX}"], expected.detach().numpy(), atol=1e-6
        )


class _Wrapper(nn.Module):
    """Stands in for Opacus' GradSampleModule (keeps the model as ``_module``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._module = module


def test_sees_through_privacy_wrapper() -> None:
    backbone, method, model = _build("federa")
    _perturb(model, np.random.default_rng(5))
    wrapped = _Wrapper(model)
    payload = method.payload(wrapped)
    assert payload.keys() == method.payload(model).keys()
    assert not any(k.startswith("_module.") for k in payload)
    before = logits(model, backbone)
    method.load_payload(wrapped, payload)
    np.testing.assert_allclose(logits(model, backbone), before, atol=1e-5)
