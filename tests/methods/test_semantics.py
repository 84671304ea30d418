"""Aggregation semantics, payload sizes and method-specific structure."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from peft.tuners.ia3 import IA3Layer

from securefed.exceptions import MethodError
from securefed.methods import METHODS, Aggregation, create_method
from tests.methods.conftest import Backbone, logits


def _lora_factors(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    return [
        (module.lora_A["default"].weight, module.lora_B["default"].weight)
        for module in model.modules()
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})
    ]


def _client_factors(name: str, clients: int = 4) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Each client's (A, B) per LoRA layer after a random local 'update' of its payload."""
    backbone = Backbone("bert")
    method = create_method(name, r=4)
    model = method.apply(backbone.model(), backbone.arch, seed=3)
    start = method.payload(model)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(clients):
        method.load_payload(model, {k: v + rng.normal(0, 0.3, v.shape) for k, v in start.items()})
        out.append(
            [
                (a.detach().numpy().copy(), b.detach().numpy().copy())
                for a, b in _lora_factors(model)
            ]
        )
    return out


def test_lora_factorwise_mean_is_not_mean_of_products() -> None:
    assert METHODS.get("lora").semantics.kind is Aggregation.FACTORWISE
    assert not METHODS.get("lora").semantics.exact_under_sum
    clients = _client_factors("lora")
    for layer in range(len(clients[0])):
        mean_of_products = np.mean([b @ a for (a, b) in (c[layer] for c in clients)], axis=0)
        mean_a = np.mean([c[layer][0] for c in clients], axis=0)
        mean_b = np.mean([c[layer][1] for c in clients], axis=0)
        assert not np.allclose(mean_of_products, mean_b @ mean_a, atol=1e-4)


def test_ffa_lora_mean_of_b_is_exact() -> None:
    assert METHODS.get("ffa-lora").semantics.kind is Aggregation.LINEAR
    assert METHODS.get("ffa-lora").semantics.exact_under_sum
    clients = _client_factors("ffa-lora")
    for layer in range(len(clients[0])):
        shared_a = clients[0][layer][0]
        assert all(np.array_equal(c[layer][0], shared_a) for c in clients), "A is shared"
        mean_of_products = np.mean([c[layer][1] @ shared_a for c in clients], axis=0)
        mean_b = np.mean([c[layer][1] for c in clients], axis=0)
        np.testing.assert_allclose(mean_of_products, mean_b @ shared_a, rtol=1e-5, atol=1e-6)


def test_ffa_lora_sends_only_b_and_head() -> None:
    backbone = Backbone("bert")
    method = create_method("ffa-lora")
    payload = method.payload(method.apply(backbone.model(), backbone.arch))
    assert not any(".lora_A." in k for k in payload)
    assert any(".lora_B." in k for k in payload)


@pytest.mark.parametrize("name", ["full", "head", "bitfit", "prompt", "prefix", "ia3", "adapter"])
def test_other_methods_are_linear(name: str) -> None:
    semantics = METHODS.get(name).semantics
    assert semantics.kind is Aggregation.LINEAR
    assert semantics.exact_under_sum
    assert METHODS.get("federa").semantics.kind is Aggregation.FACTORWISE


def test_trainable_parameter_counts_on_tiny_bert() -> None:
    backbone = Backbone("bert")
    counts = {}
    for name in METHODS:
        method = create_method(name)
        counts[name] = method.trainable_parameters(method.apply(backbone.model(), backbone.arch))
    total = sum(p.numel() for p in backbone.model().parameters())
    assert counts["full"] == total
    head = counts["head"]
    assert head < counts["bitfit"] < counts["full"]
    assert all(head < counts[n] for n in counts if n != "head")
    assert counts["ffa-lora"] < counts["lora"] == counts["federa"]
    assert counts["lora"] * 4 < counts["full"], "LoRA payload must be far smaller than full"
    frozen = create_method("full", freeze_embeddings=True)
    embeddings = sum(p.numel() for p in backbone.model().bert.embeddings.parameters())
    assert frozen.trainable_parameters(frozen.apply(backbone.model(), backbone.arch)) == (
        total - embeddings
    )


def test_ia3_targets_key_value_and_ffn_out_only() -> None:
    backbone = Backbone("bert")
    model = create_method("ia3").apply(backbone.model(), backbone.arch)
    scaled = sorted(n for n, m in model.named_modules() if isinstance(m, IA3Layer))
    suffixes = {n.split(".layer.")[1].split(".", 1)[1] for n in scaled}
    assert suffixes == {"attention.self.key", "attention.self.value", "output.dense"}
    assert len(scaled) == 3 * 2
    ffn = [
        m
        for n, m in model.named_modules()
        if isinstance(m, IA3Layer) and n.endswith(".output.dense")
    ]
    assert all(m.is_feedforward for m in ffn)


def test_federa_initialises_from_top_singular_vectors() -> None:
    backbone = Backbone("bert")
    original = backbone.model().bert.encoder.layer[0].attention.self.query.weight.detach()
    method = create_method("federa", r=4, alpha=8.0)
    model = method.apply(backbone.model(), backbone.arch)
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    scaling = 8.0 / 4
    u, s, vh = torch.linalg.svd(original, full_matrices=False)
    top = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    torch.testing.assert_close(scaling * b @ a, top, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        layer.base_layer.weight + scaling * b @ a, original, rtol=1e-5, atol=1e-5
    )


def test_federa_rank_larger_than_weight_is_refused() -> None:
    backbone = Backbone("bert")
    with pytest.raises(MethodError, match="r=64"):
        create_method("federa", r=64).apply(backbone.model(), backbone.arch)


def test_architecture_mismatch_is_refused() -> None:
    with pytest.raises(MethodError, match="vit"):
        create_method("lora").apply(Backbone("bert").model(), Backbone("vit").arch)


@pytest.mark.parametrize("name", ["adapter", "prompt", "prefix"])
def test_in_house_modules_survive_deepcopy(name: str) -> None:
    backbone = Backbone("vit")
    method = create_method(name)
    model = method.apply(backbone.model(), backbone.arch)
    method.load_payload(model, {k: v + 0.1 for k, v in method.payload(model).items()})
    torch.testing.assert_close(logits(copy.deepcopy(model), backbone), logits(model, backbone))


def test_applying_twice_is_refused() -> None:
    backbone = Backbone("vit")
    method = create_method("adapter")
    model = method.apply(backbone.model(), backbone.arch)
    with pytest.raises(MethodError, match="already"):
        method.apply(model, backbone.arch)


def test_apply_leaves_the_callers_rng_alone() -> None:
    backbone = Backbone("bert")
    model = backbone.model()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    create_method("lora").apply(model, backbone.arch, seed=11)
    torch.testing.assert_close(torch.rand(3), expected)


def test_lora_seed_changes_a() -> None:
    backbone = Backbone("bert")
    method = create_method("lora")
    a = method.payload(method.apply(backbone.model(), backbone.arch, seed=1))
    b = method.payload(method.apply(backbone.model(), backbone.arch, seed=2))
    assert any(not np.array_equal(a[k], b[k]) for k in a if ".lora_A." in k)
