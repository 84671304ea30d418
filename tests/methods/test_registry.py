"""Method registry, ``create_method`` validation and export metadata errors."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from securefed.exceptions import ConfigError, PayloadError, RegistryError, UnknownNameError
from securefed.methods import METHODS, create_method, load_exported, method_params, register_method
from securefed.methods.export import METADATA_FILE
from securefed.methods.full import FullFineTuning
from tests.methods.conftest import Backbone

EXPECTED = {
    "full",
    "head",
    "bitfit",
    "prompt",
    "prefix",
    "ia3",
    "adapter",
    "lora",
    "ffa-lora",
    "federa",
}


def test_all_methods_registered() -> None:
    assert set(METHODS.names()) == EXPECTED


def test_unknown_method_lists_the_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="lora") as err:
        create_method("dora")
    assert "dora" in str(err.value)
    assert set(err.value.valid) == EXPECTED


def test_unknown_parameter_names_it_and_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="'rank'") as err:
        create_method("lora", rank=8)
    assert "r, alpha, dropout, target_modules" in str(err.value)
    assert method_params("prompt") == ["num_tokens"]


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("lora", {"r": 0}, "r"),
        ("lora", {"r": -3}, "r"),
        ("lora", {"r": True}, "r"),
        ("lora", {"alpha": 0}, "alpha"),
        ("lora", {"dropout": 1.0}, "dropout"),
        ("lora", {"target_modules": ()}, "target_modules"),
        ("ffa-lora", {"r": 0}, "r"),
        ("federa", {"r": 2.5}, "r"),
        ("prompt", {"num_tokens": 0}, "num_tokens"),
        ("prefix", {"num_tokens": -1}, "num_tokens"),
        ("adapter", {"bottleneck": 0}, "bottleneck"),
        ("adapter", {"activation": "swish"}, "activation"),
        ("ia3", {"targets": ("keys",)}, "targets"),
        ("ia3", {"targets": ("key",), "feedforward": ("ffn_out",)}, "feedforward"),
        ("full", {"freeze_embeddings": "yes"}, "freeze_embeddings"),
    ],
)
def test_invalid_values_name_field_and_value(name: str, params: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as err:
        create_method(name, **params)
    assert repr(next(iter(params.values())))[:4] in str(err.value)


def test_configs_are_frozen_and_round_trip_through_params() -> None:
    method = create_method("lora", r=4, target_modules=["query"])
    with pytest.raises(FrozenInstanceError):
        method.r = 5  # type: ignore[misc]
    params = json.loads(json.dumps(method.params()))
    assert create_method("lora", **params) == method


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(RegistryError):
        register_method("full")(FullFineTuning)


def test_load_exported_without_metadata_is_a_payload_error(tmp_path: Path) -> None:
    backbone = Backbone("bert")
    with pytest.raises(PayloadError, match=METADATA_FILE):
        load_exported(backbone.model(), backbone.arch, tmp_path)
    (tmp_path / METADATA_FILE).write_text(
        json.dumps({"method": "head", "params": {}, "format": "zip"})
    )
    with pytest.raises(PayloadError, match="zip"):
        load_exported(backbone.model(), backbone.arch, tmp_path)
