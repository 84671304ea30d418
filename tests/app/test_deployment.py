"""Integration: SecAgg+ and CKKS with real SuperLink and SuperNode processes on loopback.

One ``flower-superlink`` (deployment mode) and four ``flower-supernode`` processes,
each with its own partition and its own roster identity in its node config
(``securefed-roster``, ``securefed-identity``, ``securefed-name``, as a deployment passes
them), run the securefed ServerApp and ClientApp through ``flwr run``. In the SecAgg+
test (malicious mode: signed keys and the consistency round) one SuperNode dies
(SIGKILL) in the middle of the round, when it receives the masked-input stage: the round
must finish with the other three clients' exact sum, which is checked against plaintext
FedAvg over those three. Every process is stopped by PID.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from securefed.app.grid import InProcessGrid
from securefed.app.launcher import (
    _bin,
    _die_with_parent,
    _flower_env,
    _free_port,
    _superlink,
    stop_process_group,
)
from securefed.app.nodes import prepare_node_configs
from securefed.app.server_app import run_server
from securefed.config import ExperimentConfig, to_flat
from securefed.report.recorder import read_metrics
from tests.app.test_flower_simulation import _no_orphans  # noqa: F401  (autouse fixture)
from tests.app.test_secagg_inprocess import N, _cfg

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DYING_APP = '''"""securefed's ClientApp, plus a mod that kills this SuperNode at a chosen stage."""
import os
import signal

import psutil
from flwr.clientapp import ClientApp

from securefed.app import client_app as base


def die_mod(msg, context, call_next):
    record = msg.content.config_records.get("secure") if msg.has_content() else None
    if record is not None and record.get("stage") == context.node_config.get("die-at"):
        node = psutil.Process()
        while node is not None and "flower-supernode" not in " ".join(node.cmdline()):
            node = node.parent()
        assert node is not None, "not running under a flower-supernode"
        os.killpg(os.getpgid(node.pid), signal.SIGKILL)  # the node and all it started
        os._exit(1)
    return call_next(msg, context)


app = ClientApp(mods=[die_mod, *base.MODS])
app.train()(base.handle_train)
app.evaluate()(base.handle_evaluate)
app.query("identify")(base.handle_identify)
'''


def _app_dir(root: Path, config_file: Path, run_dir: Path) -> Path:
    app = root / "app"
    app.mkdir(parents=True)
    (app / "dying_app.py").write_text(DYING_APP)
    (app / "pyproject.toml").write_text(tomli_w.dumps({
        "project": {"name": "securefed-deploy-test", "version": "1.0.0",
                    "dependencies": []},
        "tool": {"flwr": {"app": {
                     "publisher": "securefed",
                     "components": {"serverapp": "securefed.app.server_app:app",
                                    "clientapp": "dying_app:app"},
                     "config": {"config-file": str(config_file), "run-dir": str(run_dir)}}}},
    }))
    return app


def _deploy(cfg: ExperimentConfig, root: Path, die: dict[int, str],
            timeout: float = 420) -> tuple[dict[str, Any], list[int]]:
    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    config_file = root / "config.toml"
    config_file.write_text(tomli_w.dumps(cfg.to_dict()))
    app = _app_dir(root, config_file, run_dir)
    flwr_home = root / ".flwr"
    env = _flower_env(flwr_home)
    nodes: list[subprocess.Popen[bytes]] = []
    own = prepare_node_configs(cfg, root / "nodes")  # each SuperNode's own config
    with _superlink(root, env, simulation=False) as port:
        try:
            for i in range(cfg.data.num_clients):
                node_config = " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}"
                                       for k, v in own[i].items())
                if i in die:
                    node_config += f' die-at="{die[i]}"'
                log = (root / f"supernode-{i}.log").open("wb")
                nodes.append(subprocess.Popen(
                    [_bin("flower-supernode"), "--insecure", "--superlink",
                     f"127.0.0.1:{port}", "--isolation", "subprocess", "--port",
                     str(_free_port()), "--node-config", node_config],
                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent))
            flwr_home.mkdir(parents=True, exist_ok=True)
            (flwr_home / "config.toml").write_text(tomli_w.dumps({"superlink": {
                "default": "t", "t": {"address": f"127.0.0.1:{port}", "insecure": True}}}))
            proc = subprocess.Popen([_bin("flwr"), "run", str(app), "t", "--stream"],
                                    env=env, stdout=(root / "flwr.log").open("wb"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + timeout
            summary = run_dir / "summary.json"
            try:
                while not (summary.is_file() and summary.stat().st_size):
                    assert time.monotonic() < deadline, (root / "flwr.log").read_text()[-3000:]
                    time.sleep(1)
            finally:
                stop_process_group(proc)
            alive = [n.pid for n in nodes if n.poll() is None]
            return json.loads(summary.read_text()), alive
        finally:
            for node in nodes:
                stop_process_group(node)


def _plaintext_without(cfg: ExperimentConfig, out: Path, partition: int) -> dict[str, Any]:
    """Plaintext FedAvg over every partition except ``partition`` (in-process grid)."""
    from securefed.app import client_app

    plain = ExperimentConfig.from_dict({**cfg.to_dict(), "secure": {"mode": "none"}})
    run_config: dict[str, Any] = {"config-file": "", "run-dir": str(out), **to_flat(plain)}
    grid = InProcessGrid(client_app.app, N, run_config)
    gone = grid.node_of(partition)
    grid.drop = lambda m: m.metadata.message_type == "train" and m.metadata.dst_node_id == gone
    return run_server(grid, run_config)


def test_secagg_on_supernodes_survives_a_supernode_dying_mid_round(tiny_backbones,
                                                                   tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path / "run",
               secure={"mode": "secagg", "stage_timeout_s": 30.0},
               federation={"min_replies": 3})
    summary, alive = _deploy(cfg, tmp_path, die={2: "masked-input"})
    assert summary["status"] == "completed", summary.get("reason")
    assert summary["secagg_adversary"] == "malicious"
    assert len(alive) == N - 1  # the SuperNode of partition 2 was killed
    (row,) = read_metrics(tmp_path / "run" / "metrics.jsonl")[1:]
    assert row["secure"]["secagg_survivors"]["masked-input"] == N - 1
    assert row["secure"]["secagg_survivors"]["consistency"] == N - 1
    assert len(row["clients"]) == N - 1 and len(row["rejected"]) == 1
    # SuperNodes are named by the partition id of their own --node-config
    assert [c["partition_id"] for c in row["clients"]] == [0, 1, 3]
    assert row["rejected"][0]["partition_id"] == 2
    expected = _plaintext_without(cfg, tmp_path / "plain", partition=2)
    assert summary["loss_per_round"] == pytest.approx(expected["loss_per_round"], abs=1e-5)


def test_ckks_on_supernodes(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path / "run",
               secure={"mode": "ckks", "stage_timeout_s": 60.0})
    summary, alive = _deploy(cfg, tmp_path, die={})
    assert summary["status"] == "completed", summary.get("reason")
    assert summary["ckks_key_role"] == "authority" and len(alive) == N
