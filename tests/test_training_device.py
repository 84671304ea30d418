"""GPU clients: batches follow the model's device, and a GPU request without CUDA is a
clear error on the node (the CUDA path itself runs only where a GPU is lent)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from securefed.app import local
from securefed.config import ExperimentConfig
from securefed.exceptions import SecurefedError
from securefed.training import model_device, on_device


def test_batches_follow_the_model_device() -> None:
    model = torch.nn.Linear(3, 2)
    assert model_device(model) == torch.device("cpu")
    batch = {"input": torch.ones(2, 3), "labels": torch.zeros(2, dtype=torch.long)}
    assert on_device(batch, torch.device("cpu")) is batch  # no copy on the CPU
    meta = on_device(batch, torch.device("meta"))
    assert all(v.device.type == "meta" for v in meta.values())
    assert model_device(torch.nn.Module()) == torch.device("cpu")


def test_a_gpu_request_without_cuda_is_refused_on_the_node(monkeypatch) -> None:
    config = ExperimentConfig()
    config = dataclasses.replace(config, resources=dataclasses.replace(
        config.resources, client_gpus=0.5))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tm = SimpleNamespace(model=torch.nn.Linear(3, 2))
    with pytest.raises(SecurefedError, match=r"client_gpus = 0.5.*no CUDA device"):
        local._place(tm, config)  # type: ignore[arg-type]
    cpu = dataclasses.replace(config, resources=dataclasses.replace(
        config.resources, client_gpus=0.0))
    local._place(tm, cpu)  # type: ignore[arg-type]
    assert model_device(tm.model).type == "cpu"
