"""Classifier heads: loading, deterministic head init, weight integrity, preprocessors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, PreTrainedTokenizerBase

from securefed.exceptions import AssetError, ConfigError
from securefed.models import ImageSpec, build_classifier, load_preprocessor, resolve_backbone
from securefed.models._hf import IMAGENET_MEAN, IMAGENET_STD

from .conftest import TINY_TYPES

EXPECTED_CLASS = {
    "bert": "BertForSequenceClassification",
    "roberta": "RobertaForSequenceClassification",
    "vit": "ViTForImageClassification",
    "dinov2": "Dinov2ForImageClassification",
    "clip": "CLIPForImageClassification",
}


def _head_state(model: torch.nn.Module, head: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {
        f"{h}.{k}": v.detach().clone()
        for h in head
        for k, v in model.get_submodule(h).state_dict().items()
    }


def _forward(model: torch.nn.Module, backbone_modality: str, preprocessor: object) -> torch.Tensor:
    if backbone_modality == "text":
        assert isinstance(preprocessor, PreTrainedTokenizerBase)
        batch = preprocessor(["the market is up", "a new film"], padding=True, return_tensors="pt")
        return model(**batch).logits
    assert isinstance(preprocessor, ImageSpec)
    return model(pixel_values=torch.randn(2, 3, preprocessor.size, preprocessor.size)).logits


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_tiny_builds_and_runs(tiny_folders: dict[str, Path], model_type: str) -> None:
    backbone = resolve_backbone(str(tiny_folders[model_type]))
    model = build_classifier(backbone, 3, id2label={0: "neg", 1: "neu", 2: "pos"})
    assert type(model).__name__ == EXPECTED_CLASS[model_type]
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert model.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    assert next(model.parameters()).dtype == torch.float32
    for name in backbone.architecture.head:
        model.get_submodule(name)  # every head module named by the architecture exists
    logits = _forward(model, backbone.modality, load_preprocessor(backbone))
    assert logits.shape == (2, 3)


def test_clip_uses_vision_tower_only(tiny_folders: dict[str, Path]) -> None:
    model = build_classifier(resolve_backbone(str(tiny_folders["clip"])), 2)
    names = [n for n, _ in model.named_parameters()]
    assert names
    assert not any(n.startswith("text_model") for n in names)
    assert all(n.startswith(("vision_model.", "classifier.")) for n in names)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_head_init_is_deterministic(tiny_folders: dict[str, Path], model_type: str) -> None:
    backbone = resolve_backbone(str(tiny_folders[model_type]))
    head = backbone.architecture.head
    a = _head_state(build_classifier(backbone, 4, seed=7), head)
    b = _head_state(build_classifier(backbone, 4, seed=7), head)
    c = _head_state(build_classifier(backbone, 4, seed=8), head)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("weight") and a[k].dim() == 2]
    assert weights
    assert any(not torch.equal(a[k], c[k]) for k in weights)


def test_build_does_not_disturb_global_rng(tiny_folders: dict[str, Path]) -> None:
    backbone = resolve_backbone(str(tiny_folders["bert"]))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    build_classifier(backbone, 2)
    assert torch.equal(torch.get_rng_state(), state)


def test_backbone_weights_come_from_checkpoint(tiny_folders: dict[str, Path]) -> None:
    folder = tiny_folders["bert"]  # BERT's on-disk names equal its module names
    saved = load_file(str(folder / "model.safetensors"))
    model = build_classifier(resolve_backbone(str(folder)), 2, seed=3)
    state = model.state_dict()
    compared = [k for k in saved if k.startswith(("embeddings.", "encoder."))]
    assert len(compared) > 20
    for key in compared:
        assert torch.equal(state[f"bert.{key}"], saved[key]), key


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_base_model_matches_plain_load(tiny_folders: dict[str, Path], model_type: str) -> None:
    folder = tiny_folders[model_type]
    model = build_classifier(resolve_backbone(str(folder)), 2, seed=3)
    plain = AutoModel.from_pretrained(str(folder)).state_dict()
    ours = model.base_model.state_dict()
    if model_type == "clip":  # the classifier keeps the vision tower only
        plain = {k.removeprefix("vision_model."): v for k, v in plain.items()}
        ours = {k.removeprefix("vision_model."): v for k, v in ours.items()}
    shared = set(ours) & set(plain)
    assert len(shared) >= len(ours) - 2  # at most a pooler differs
    assert all(torch.equal(ours[k], plain[k]) for k in shared)


def test_minilm_builds_with_real_weights() -> None:
    backbone = resolve_backbone("minilm-l6")
    model = build_classifier(backbone, 5)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 5
    saved = load_file(str(Path(backbone.path) / "model.safetensors"))
    state = model.state_dict()
    encoder = [k for k in saved if k.startswith("encoder.")]
    assert len(encoder) == 6 * 16  # 6 layers of 16 tensors
    for key in [*encoder, "embeddings.word_embeddings.weight"]:
        assert torch.equal(state[f"bert.{key}"], saved[key]), key
    # The head is new: absent from the checkpoint, and initialised with small weights.
    assert not any(k.startswith("classifier") for k in saved)
    assert state["classifier.weight"].shape == (5, 384)
    assert 0.01 < float(state["classifier.weight"].std()) < 0.03
    assert torch.count_nonzero(state["classifier.bias"]) == 0
    tokenizer = load_preprocessor(backbone)
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    batch = tokenizer(["business news today"], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 5)


def test_missing_backbone_weight_is_asset_error(fresh_tiny: Callable[[str], Path]) -> None:
    folder = fresh_tiny("bert")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["encoder.layer.0.attention.self.query.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AssetError, match=r"encoder\.layer\.0\.attention\.self\.query"):
        build_classifier(resolve_backbone(str(folder)), 2)


@pytest.mark.parametrize("num_labels", [0, -1, True, 2.0])
def test_bad_num_labels(tiny_folders: dict[str, Path], num_labels: object) -> None:
    backbone = resolve_backbone(str(tiny_folders["bert"]))
    with pytest.raises(ConfigError, match="num_labels"):
        build_classifier(backbone, num_labels)  # type: ignore[arg-type]


def test_bad_id2label(tiny_folders: dict[str, Path]) -> None:
    backbone = resolve_backbone(str(tiny_folders["bert"]))
    with pytest.raises(ConfigError, match="id2label"):
        build_classifier(backbone, 2, id2label={0: "a", 2: "b"})


def test_image_spec_from_preprocessor_config(tiny_folders: dict[str, Path]) -> None:
    spec = load_preprocessor(resolve_backbone(str(tiny_folders["dinov2"])))
    assert spec == ImageSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=32)


def test_image_spec_defaults(fresh_tiny: Callable[[str], Path]) -> None:
    folder = fresh_tiny("clip")
    (folder / "preprocessor_config.json").unlink()
    spec = load_preprocessor(resolve_backbone(str(folder)))
    assert spec == ImageSpec(mean=IMAGENET_MEAN, std=IMAGENET_STD, size=32)


def test_image_spec_prefers_crop_size(fresh_tiny: Callable[[str], Path]) -> None:
    folder = fresh_tiny("vit")
    config = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    spec = load_preprocessor(resolve_backbone(str(folder)))
    assert isinstance(spec, ImageSpec)
    assert spec.size == 32
    assert spec.mean == IMAGENET_MEAN


@pytest.mark.parametrize(
    ("mean", "std", "size"),
    [((), (), 4), ((0.5,), (0.5, 0.5), 4), ((0.5,), (0.0,), 4), ((0.5,), (0.5,), 0)],
)
def test_image_spec_validation(mean: tuple[float, ...], std: tuple[float, ...], size: int) -> None:
    with pytest.raises(ConfigError):
        ImageSpec(mean=mean, std=std, size=size)
