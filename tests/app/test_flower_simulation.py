"""Integration: the same apps through real Flower (SuperLink + simulation engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import tomli_w

from securefed.app.launcher import _flower_env, _superlink, run_simulation, stop_process_group
from securefed.report.recorder import read_metrics
from securefed.rundir import MANIFEST, verify_manifest
from tests.app.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _orphans_since(t0: float) -> list[str]:
    """Processes re-parented to init since ``t0`` that look like Flower or Ray."""
    out = []
    for p in psutil.process_iter(["ppid", "create_time", "cmdline", "name"]):
        info = p.info
        cmd = " ".join(info["cmdline"] or []) + " " + (info["name"] or "")
        if (info["ppid"] == 1 and info["create_time"] >= t0
                and any(w in cmd for w in ("ray", "flower", "flwr"))):
            out.append(f"{p.pid} {cmd[:80]}")
    return out


@pytest.fixture(autouse=True)
def _no_orphans():
    t0 = time.time() - 1
    yield
    time.sleep(1)
    assert not _orphans_since(t0)


def test_securefed_run_on_flower_simulation_engine(tiny_backbones, tmp_path) -> None:
    before = _descendants()
    cfg = tiny_config(tiny_backbones["bert"], tmp_path / "run", rounds=2, num_clients=2,
                      per_round=2)
    summary = run_simulation(cfg, tmp_path / "run", num_cpus=1, timeout_s=300)
    assert summary["status"] == "completed" and summary["rounds"] == 2
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["bytes_up_per_client"] > 0 for r in rows[1:])
    log = (tmp_path / "run" / "flower.log").read_text()
    assert "securefed" in log  # the run went through `flwr run` against our SuperLink
    superlink = int((tmp_path / "run" / "superlink.pid").read_text())
    assert not psutil.pid_exists(superlink) or psutil.Process(superlink).status() == "zombie"
    assert _descendants() <= before  # nothing we started is left running


def test_plain_flwr_run_of_the_repo_app(tiny_backbones, tmp_path) -> None:
    """`flwr run .` with the repo's pyproject (2 clients, 2 rounds, tiny model)."""
    flwr_home = tmp_path / "flwr-home"
    env = _flower_env(flwr_home)
    overrides = {
        "model.backbone": str(tiny_backbones["bert"]), "model.max_length": 32,
        "data.max_train": 40, "data.max_test": 20, "data.num_clients": 2,
        "federation.rounds": 2, "federation.clients_per_round": 2,
        "federation.min_replies": 2, "federation.evaluate_clients": 2,
        "train.batch_size": 8, "run-dir": str(tmp_path / "out"),
    }
    override_file = tmp_path / "overrides.toml"
    override_file.write_text(tomli_w.dumps(overrides))
    with _superlink(tmp_path, env) as port:
        flwr_home.mkdir(parents=True, exist_ok=True)
        (flwr_home / "config.toml").write_text(tomli_w.dumps({"superlink": {
            "default": "t", "t": {"address": f"127.0.0.1:{port}", "insecure": True}}}))
        cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(ROOT), "t", "--stream",
               "--run-config", str(override_file),
               "--federation-config", "num-supernodes=2 client-resources-num-cpus=1"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=300)
        finally:
            stop_process_group(proc)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "completed", out[-3000:]
    assert len(summary["accuracy_per_round"]) == 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_every_flower_process_and_records_an_interrupted_run(
        tiny_backbones, tmp_path, signum) -> None:
    """Ctrl-C and SIGTERM alike: every process stopped (by the PIDs seen mid-run, the
    SuperLink's among them), ``summary.json`` says interrupted with the last completed
    round, ``manifest.json`` is written, the exit status is 128 + signal, and the
    terminal shows no Flower log line or known warning."""
    # far more rounds than can finish: the interrupt must land while Flower is running
    cfg = tiny_config(tiny_backbones["bert"], tmp_path / "run", rounds=5000, num_clients=2,
                      per_round=2)
    cfg_file = tmp_path / "cfg.toml"
    cfg_file.write_text(tomli_w.dumps(cfg.to_dict()))
    cli = Path(sys.executable).parent / "securefed"
    out = tmp_path / "cli.out"

    def as_at_a_terminal() -> None:  # a shell's background job (CI) inherits SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    with out.open("wb") as sink:
        proc = subprocess.Popen([str(cli), "run", str(cfg_file), "--out", str(tmp_path / "run"),
                                 "--num-cpus", "1"], env=dict(os.environ), stdout=sink,
                                stderr=subprocess.STDOUT, preexec_fn=as_at_a_terminal)
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while not (metrics.exists() and read_metrics(metrics)):
            assert proc.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.5)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert family, "expected Flower processes under securefed run"
        superlink = int((tmp_path / "run" / "superlink.pid").read_text())
        assert superlink in {p.pid for p in family}
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
        terminal = out.read_text(errors="replace")
        assert code == 128 + signum, (code, terminal)
        _, alive = psutil.wait_procs(family, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        if proc.poll() is None:  # never leave a 5000-round run behind: SIGTERM stops it
            proc.terminate()  # and its Flower processes (launcher.signals_as_interrupts)
            proc.wait(timeout=60)
    name = signal.Signals(signum).name
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary  # not "failed" with a Ray error
    assert summary["reason"] == f"interrupted by {name}" and summary["method"] == "lora"
    assert summary["last_completed_round"] == read_metrics(metrics)[-1]["round"]
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["status"] == "interrupted" and verify_manifest(tmp_path / "run") == []
    assert f"interrupted by {name}" in terminal
    for noise in ("INFO", "FutureWarning", "fraction_evaluate", "Traceback"):
        assert noise not in terminal, (noise, terminal)


#: The whole privacy stack: DP-SGD clients, client-side clipping inside SecAgg+ masking,
#: user-level noise and accounting on the server.
PRIVATE = {"dp": {"mode": "sample", "randomness": "seeded"},
           "user_dp": {"clipping": "client-fixed", "noise_multiplier": 0.5, "delta": 1e-2,
                       "sampling": "fixed", "target_epsilon": 100.0, "randomness": "seeded"}}


@pytest.mark.parametrize(("mode", "tables"), [("secagg", PRIVATE), ("ckks", {})])
def test_secure_modes_on_flower_simulation_engine(tiny_backbones, tmp_path, mode,
                                                  tables) -> None:
    """SecAgg+ (with DP-SGD and user-level DP) and CKKS through `flwr run` on the
    simulation engine (Ray workers keep each node's Context between protocol stages)."""
    cfg = tiny_config(tiny_backbones["bert"], tmp_path / "run", method_name="ffa-lora",
                      rounds=2, num_clients=3, per_round=3, secure={"mode": mode},
                      federation={"evaluate_clients": 0}, **tables)
    summary = run_simulation(cfg, tmp_path / "run", num_cpus=1, timeout_s=300)
    assert summary["status"] == "completed" and summary["secure_mode"] == mode
    if tables:
        assert summary["epsilon"] > 0 and summary["user_level_epsilon"] > 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")[1:]
    assert len(rows) == 2 and all(len(r["clients"]) == 3 for r in rows)
    assert all(r["secure"]["secure"] in ("secagg+", "ckks") for r in rows)
    log = (tmp_path / "run" / "flower.log").read_text()
    assert "[ROUND 2/2]" in log and "fraction_evaluate" not in log  # no false warning
    assert "FutureWarning" not in log  # known warnings silenced in Flower's processes too
    if mode == "secagg":  # malicious mode: each simulated node found its roster identity
        assert summary["secagg_adversary"] == "malicious"
        assert all(r["secure"]["secagg_survivors"]["consistency"] == 3 for r in rows)
