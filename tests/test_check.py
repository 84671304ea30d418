"""``securefed check``: every check before any Flower process starts, and the run's plan.

The failures issue 11 reported (a 60-line traceback after 30 s for ``num_clients=2000``,
a ``ZeroDivisionError`` for ``--num-cpus 0``, "ActorPool is empty" for more CPUs than
the machine has) and the other impossible settings are each one ``error:`` line from
``check`` and from ``run``, with no process started; the plan's numbers are the ones
the run's own code computes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from securefed.app.check import available_cpus, check_config
from securefed.cli import app
from securefed.config import ExperimentConfig, apply_overrides, load_config
from securefed.exceptions import ConfigError
from tests.app.conftest import tiny_config

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.toml"
#: A failed check is a dataset load and a few checks; the reported failures took 30 s
#: and a Flower start-up. Generous for a loaded 2-core machine.
SECONDS = 60
CPUS = available_cpus()  # what Ray sees: os.cpu_count(), less any cgroup limit
PRIVATE = ["--set", "federation.evaluate_clients=0"]  # clients' metrics stay home


class _ProcessStarted(AssertionError):
    pass


@pytest.fixture
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything (flower-superlink, flwr) would be started."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise _ProcessStarted(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


FAILURES = [
    pytest.param(["--set", "data.num_clients=2000"],
                 "[data] num_clients = 2000 cannot be partitioned", id="num_clients=2000"),
    pytest.param(["--num-cpus", "0"], "[resources] client_cpus = 0 is invalid",
                 id="num-cpus=0"),
    pytest.param(["--num-cpus", str(CPUS + 1)], f"exceeds the {CPUS} CPUs of this machine",
                 id="num-cpus>cores"),
    pytest.param(["--set", "data.dataset=mnist-5k"],
                 "'minilm-l6' is a text backbone, but [data] dataset = 'mnist-5k' holds images",
                 id="text-backbone-on-mnist"),
    pytest.param(["--set", "federation.clients_per_round=11"],
                 "clients_per_round = 11 exceeds [data] num_clients = 10", id="per-round>clients"),
    pytest.param(["--set", "federation.min_replies=6"], "min_replies = 6 is invalid",
                 id="min_replies>per-round"),
    pytest.param([*PRIVATE, "--set", "dp.mode=sample", "--set", "dp.target_epsilon=0.01"],
                 "[dp] target_epsilon = 0.01 cannot be met", id="dp-target-unreachable"),
    pytest.param([*PRIVATE, "--set", "dp.mode=sample", "--set", "dp.noise_multiplier=0.5",
                  "--set", "dp.target_epsilon=1"], "[dp] budget 1 refuses round 1",
                 id="dp-budget-refuses-round-1"),
    pytest.param([*PRIVATE, "--set", "secure.mode=secagg", "--set", "method.name=ffa-lora",
                  "--set", "federation.clients_per_round=2", "--set", "federation.min_replies=0"],
                 "every node would refuse the setup", id="secagg-below-node-floors"),
    pytest.param([*PRIVATE, "--set", "secure.mode=secagg", "--set", "method.name=ffa-lora",
                  "--set", "secure.threshold=9"],
                 "[secure] mode = 'secagg' with 5 clients per round: threshold t=9",
                 id="secagg-threshold>degree"),
    pytest.param([*PRIVATE, "--set", "secure.mode=secagg", "--set", "method.name=ffa-lora",
                  "--set", "secure.bits=8"], "[secure] mode = 'secagg'", id="secagg-overflow"),
    pytest.param([*PRIVATE, "--set", "user_dp.clipping=server-fixed",
                  "--set", "user_dp.delta=1e-3", "--set", "federation.min_replies=0"],
                 "under [user_dp] sampling = 'poisson'", id="user-dp-poisson-shortfall"),
    pytest.param([*PRIVATE, "--set", "user_dp.clipping=server-fixed", "--set",
                  "user_dp.delta=1e-3", "--set", "user_dp.sampling=fixed", "--set",
                  "user_dp.target_epsilon=0.001"],
                 "[user_dp] target_epsilon = 0.001 cannot be met", id="user-dp-unreachable"),
]


def _flat(output: str) -> str:
    return " ".join(output.split())


@pytest.mark.parametrize(("args", "needle"), FAILURES)
def test_each_reported_failure_is_one_error_line_from_check_and_run(
        no_processes: None, tmp_path: Path, args: list[str], needle: str) -> None:
    for command in (["check"], ["run", "--out", str(tmp_path / "run")]):
        t0 = time.monotonic()
        res = runner.invoke(app, [*command, str(QUICKSTART), *args])
        elapsed = time.monotonic() - t0
        assert res.exit_code == 2, (command, res.output, res.exception)
        assert not isinstance(res.exception, _ProcessStarted)
        error = res.output[res.output.find("error: "):]  # third-party warnings aside
        assert error.startswith("error: ") and needle in _flat(error), res.output
        assert "Traceback" not in res.output
        assert elapsed < SECONDS, (command, elapsed)
    assert not (tmp_path / "run").exists()  # nothing written, nothing started


def _quickstart(*overrides: str) -> ExperimentConfig:
    return apply_overrides(load_config(QUICKSTART), list(overrides))


@pytest.mark.parametrize("overrides", [
    ["data.num_clients=2000"], ["data.num_clients=800"], ["data.dataset=mnist-5k"],
    ["federation.evaluate_clients=0", "dp.mode=sample", "dp.target_epsilon=0.01"],
    ["federation.evaluate_clients=0", "secure.mode=secagg", "method.name=ffa-lora",
     "federation.clients_per_round=2", "federation.min_replies=0"],
], ids=["2000", "800", "mnist", "dp", "secagg"])
def test_the_error_message_is_a_single_line(overrides: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        check_config(_quickstart(*overrides))
    assert "\n" not in str(info.value)


def test_machine_checks_use_this_machines_cpus_and_gpus(monkeypatch) -> None:
    import torch

    import securefed.app.check as check

    assert 1 <= CPUS <= (os.cpu_count() or 1)
    cfg = _quickstart("resources.client_cpus=3")
    monkeypatch.setattr(check, "available_cpus", lambda: 2)
    with pytest.raises(ConfigError, match=r"client_cpus = 3 \(--num-cpus\) exceeds the 2 CPUs"):
        check_config(cfg)
    assert check_config(cfg, engine="inprocess").client_cpus == 3  # no Ray in-process
    monkeypatch.setattr(check, "available_cpus", lambda: 8)
    assert check_config(cfg).parallel_clients == 2  # 8 // 3 CPUs a client
    gpu = _quickstart("resources.client_gpus=0.5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"client_gpus = 0.5 \(--num-gpus\) needs CUDA"):
        check_config(gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_config(gpu).client_gpus == 0.5
    with pytest.raises(ConfigError, match=r"torch sees 1 here; use 0\.\.1"):
        check_config(_quickstart("resources.client_gpus=2"))
    with pytest.raises(ConfigError, match=r"DP-SGD \(Opacus\) runs on CPU clients only"):
        check_config(_quickstart("resources.client_gpus=0.5", "dp.mode=sample",
                                 "federation.evaluate_clients=0"))


def test_resources_reach_flowers_client_resources(monkeypatch, tmp_path) -> None:
    """``client-resources-num-cpus/-num-gpus`` come from ``[resources]`` (not 0)."""
    import contextlib

    import torch

    import securefed.app.launcher as launcher

    class Captured(Exception):
        pass

    def capture(cmd: list[str], **kwargs: Any) -> None:
        raise Captured(cmd)

    @contextlib.contextmanager
    def fake_superlink(*args: Any, **kwargs: Any):
        yield 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(launcher, "_superlink", fake_superlink)
    monkeypatch.setattr(launcher.subprocess, "Popen", capture)
    cfg = _quickstart("resources.client_gpus=0.25", "resources.client_cpus=1")
    with pytest.raises(Captured) as info:
        launcher.run_simulation(cfg, tmp_path / "run")
    cmd = info.value.args[0]
    federation = cmd[cmd.index("--federation-config") + 1]
    assert "client-resources-num-cpus=1 " in federation
    assert federation.endswith("client-resources-num-gpus=0.25")
    with pytest.raises(Captured) as info:  # the launcher's own override still works
        launcher.run_simulation(_quickstart(), tmp_path / "run2", num_cpus=1)
    assert "client-resources-num-cpus=1 " in info.value.args[0][-1]


def test_check_prints_the_resolved_config_and_the_plan(no_processes) -> None:
    res = runner.invoke(app, ["check", str(QUICKSTART), "--set", "federation.rounds=3"])
    assert res.exit_code == 0, res.output
    assert "[federation]\nrounds = 3\n" in res.output  # the resolved TOML
    assert "[resources]\nclient_cpus = 2\nclient_gpus = 0.0\n" in res.output
    for row in ("clients per round", "bytes up per client per round", "trainable params"):
        assert row in res.output


def test_check_json_and_dry_run(no_processes, tmp_path, tiny_backbones) -> None:
    res = runner.invoke(app, ["check", str(QUICKSTART), "--num-cpus", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["config"]["resources"] == {"client_cpus": 1, "client_gpus": 0.0}
    plan = doc["plan"]
    assert plan["num_clients"] == 10 and plan["clients_per_round"] == 5
    assert plan["rounds"] == 6 and plan["required_replies"] == 4
    assert sum(plan["train_sizes"]) + sum(plan["val_sizes"]) == plan["train_examples"]
    assert plan["secure"] == {"mode": "none"} and plan["dp"] is None
    out = tmp_path / "run"
    dry = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(out), "--num-cpus", "1",
                              "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "bytes up per client per round" in dry.output and not out.exists()


def _tiny(tiny_backbones: dict[str, Path], tmp_path: Path, **tables: Any) -> ExperimentConfig:
    return tiny_config(tiny_backbones["bert"], tmp_path, num_clients=6, per_round=4,
                       rounds=3, **tables)


def test_plan_bytes_are_the_methods_payload(tiny_backbones, tmp_path) -> None:
    from securefed.methods.inventory import method_inventory

    rows = {r["method"]: r for r in method_inventory(str(tiny_backbones["bert"]), num_labels=5)}
    for method in ("lora", "bitfit", "ffa-lora"):
        plan = check_config(tiny_config(tiny_backbones["bert"], tmp_path, method_name=method))
        assert plan.payload_bytes == rows[method]["payload_bytes"], method
        assert plan.payload_values == rows[method]["trainable_params"], method
        assert plan.bytes_up == plan.bytes_down == plan.payload_bytes, method
        assert plan.trainable_params == plan.payload_values, method  # native payloads


def test_plan_partition_sizes_are_the_clients_own(tiny_backbones, tmp_path) -> None:
    from securefed.app.runtime import client_data

    cfg = _tiny(tiny_backbones, tmp_path)
    plan = check_config(cfg)
    for i in range(cfg.data.num_clients):
        data = client_data(cfg, i)
        assert (plan.train_sizes[i], plan.val_sizes[i]) == (len(data.train), len(data.val))


def test_plan_secagg_k_t_bits_are_what_the_server_proposes(tiny_backbones, tmp_path) -> None:
    from securefed.app.runtime import build_method
    from securefed.app.secure import wrap_strategy
    from securefed.secagg.plan import plan as secagg_plan
    from strategies.adapter_fedavg import AdapterFedAvg

    cfg = _tiny(tiny_backbones, tmp_path, method_name="ffa-lora",
                secure={"mode": "secagg"}, federation={"min_replies": 3})
    plan = check_config(cfg)
    inner = AdapterFedAvg(clients_per_round=4, min_replies=3, rng=np.random.default_rng(0))
    strategy = wrap_strategy(cfg, inner, build_method(cfg))
    runtime = strategy.config_for(4, plan.payload_values)  # type: ignore[attr-defined]
    s = plan.secure
    assert (s["degree"], s["threshold"], s["bits"]) == (
        runtime.graph.degree, runtime.graph.threshold, runtime.bits)
    assert s["masked_values"] == runtime.vector_length + 1  # update + weight field
    reference = secagg_plan(4, plan.payload_values + 1, 0.25, bits=32,
                            degree=runtime.graph.degree)
    assert s["stage_bytes"] == reference.stage_bytes
    assert plan.bytes_up == reference.bytes_per_client > plan.payload_bytes
    assert s["failure_probability"] == reference.failure_probability
    assert plan.bytes_down == plan.payload_bytes


def test_plan_ckks_bytes_are_one_encrypted_update(tiny_backbones, tmp_path) -> None:
    from securefed.he.ckks import encrypt_vector
    from securefed.he.keys import CKKSConfig, generate_keys

    cfg = _tiny(tiny_backbones, tmp_path, method_name="ffa-lora", secure={"mode": "ckks"})
    plan = check_config(cfg)
    values = plan.payload_values + 1
    real = encrypt_vector(generate_keys(CKKSConfig()).public_context,
                          np.random.default_rng(0).uniform(-1, 1, values))
    assert plan.secure["ciphertexts"] == math.ceil(values / 4096)
    assert plan.bytes_up == pytest.approx(len(real), rel=5e-3)  # zstd: ~0.1 %


def test_plan_dp_sigma_is_the_calibrated_one(tiny_backbones, tmp_path) -> None:
    from securefed.privacy.calibration import calibrate_noise, epsilon_for

    dp = {"mode": "sample", "target_epsilon": 4.0, "randomness": "seeded"}
    cfg = _tiny(tiny_backbones, tmp_path, dp=dp)
    plan = check_config(cfg)
    assert plan.dp is not None and plan.dp["calibrated"]
    smallest, largest = min(plan.train_sizes), max(plan.train_sizes)
    assert [c["train_examples"] for c in plan.dp["clients"]] == [smallest, largest]
    for client in plan.dp["clients"]:
        n, batch = client["train_examples"], cfg.train.batch_size
        steps, q = math.ceil(n / batch), min(1.0, batch / n)
        sigma = calibrate_noise("rdp", target_epsilon=4.0, delta=1e-5, sample_rate=q,
                                steps=steps * 3).noise_multiplier
        assert client["noise_multiplier"] == sigma and client["sample_rate"] == q
        assert client["epsilon"] == epsilon_for("rdp", noise_multiplier=sigma, sample_rate=q,
                                                steps=steps * 3, delta=1e-5) <= 4.0
    assert plan.dp["first_refused_round"] is None


def test_plan_dp_with_a_given_sigma_names_the_round_the_budget_stops(tiny_backbones,
                                                                     tmp_path) -> None:
    cfg = _tiny(tiny_backbones, tmp_path, federation={"rounds": 20}, dp={
        "mode": "sample", "noise_multiplier": 1.0, "target_epsilon": 30.0})
    plan = check_config(cfg)
    assert plan.dp is not None and not plan.dp["calibrated"]
    assert plan.dp["noise_multiplier_min"] == plan.dp["noise_multiplier_max"] == 1.0
    stop = plan.dp["first_refused_round"]
    assert stop is not None and 1 < stop <= 20 and plan.dp["epsilon_max"] > 30.0


def test_plan_user_dp_noise_and_epsilon(tiny_backbones, tmp_path) -> None:
    from securefed.app.central_dp import user_noise
    from securefed.privacy.calibration import epsilon_for

    user = {"clipping": "server-fixed", "delta": 1e-2, "target_epsilon": 5.0,
            "sampling": "poisson"}
    cfg = _tiny(tiny_backbones, tmp_path, user_dp=user, federation={"min_replies": 1})
    plan = check_config(cfg)
    assert plan.user_dp is not None
    z = user_noise(cfg)
    assert plan.user_dp["noise_multiplier"] == z and plan.user_dp["sample_rate"] == 4 / 6
    assert plan.user_dp["epsilon"] == epsilon_for("rdp", noise_multiplier=z,
                                                  sample_rate=4 / 6, steps=3, delta=1e-2)
    assert plan.seeds["user_dp_noise_and_sampling"] == "OS CSPRNG (unseeded)"


def test_the_launcher_runs_the_checks_for_inprocess_runs_too(tiny_backbones, tmp_path) -> None:
    from securefed.app.launcher import run_inprocess

    cfg = tiny_config(tiny_backbones["vit"], tmp_path / "run", dataset="bbc-news")
    with pytest.raises(ConfigError, match="is an image backbone"):
        run_inprocess(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_dp_plan_warns_when_noise_swamps_the_signal() -> None:
    """Reported: `--set dp.mode=sample --set dp.target_epsilon=8` on the quickstart ended
    at 0.238, below round 0, with no hint why. The plan now says why before the run."""
    from securefed.app.plan import NOISE_TO_SIGNAL_HINT, noise_to_signal

    assert noise_to_signal(1.0, 10_000, 50.0) == pytest.approx(2.0)
    lora = check_config(_quickstart("dp.mode=sample", "dp.target_epsilon=8",
                                    "federation.evaluate_clients=0"))
    assert lora.dp is not None
    assert lora.dp["noise_to_signal_max"] > NOISE_TO_SIGNAL_HINT
    for c in lora.dp["clients"]:
        batch = c["sample_rate"] * c["train_examples"]
        assert c["noise_to_signal"] == pytest.approx(
            c["noise_multiplier"] * math.sqrt(lora.trainable_params) / batch)
    head = check_config(_quickstart("dp.mode=sample", "dp.target_epsilon=8",
                                    "federation.evaluate_clients=0", "method.name=head"))
    assert head.dp is not None
    assert head.dp["noise_to_signal_max"] < lora.dp["noise_to_signal_max"] / 5
