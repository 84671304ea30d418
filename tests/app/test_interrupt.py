"""Integration: SIGINT and SIGTERM to ``securefed run`` on Flower's simulation engine.

Both stop every process the run started (checked by PID: the SuperLink recorded in
``superlink.pid`` and every descendant seen mid-run), write ``summary.json`` with
``status = "interrupted"`` and the last completed round, and ``manifest.json``; the CLI
exits 130 / 143. The terminal gets the bar and the one-line notice, not Flower's log.
"""

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

from securefed.report.recorder import read_metrics
from securefed.rundir import MANIFEST, verify_manifest
from tests.app.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_round(proc: subprocess.Popen[str], metrics: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        try:
            if any(r["round"] >= 1 for r in read_metrics(metrics)):
                return
        except ValueError:
            pass  # a line being written
        time.sleep(0.5)
    raise AssertionError("no round completed in time")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_every_process_and_records_an_interrupted_run(
        tiny_backbones, tmp_path, signum) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(tiny_backbones["bert"], run, rounds=100, num_clients=2, per_round=2)
    config = tmp_path / "tiny.toml"
    config.write_text(tomli_w.dumps(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "securefed.cli", "run", str(config), "--out", str(run),
         "--num-cpus", "1"], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_round(proc, run / "metrics.jsonl", timeout=300)
        family = psutil.Process(proc.pid).children(recursive=True)
        superlink = int((run / "superlink.pid").read_text())
        assert superlink in {p.pid for p in family}
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # only on a failure above
            proc.kill()
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"interrupted by {name}" in err
    assert not [p.pid for p in family if _alive(p)]  # nothing we started is left running
    summary = json.loads((run / "summary.json").read_text())
    rows = [r for r in read_metrics(run / "metrics.jsonl") if r["round"] > 0]
    assert summary["status"] == "interrupted" and summary["reason"] == f"interrupted by {name}"
    assert summary["last_completed_round"] == rows[-1]["round"] >= 1
    assert summary["method"] == "lora"
    manifest = json.loads((run / MANIFEST).read_text())
    assert manifest["status"] == "interrupted" and verify_manifest(run) == []
    # the terminal: the bar and the notice; Flower's lines and known warnings elsewhere
    for noise in ("INFO", "FutureWarning", "fraction_evaluate", "Traceback"):
        assert noise not in out + err, noise
    assert "[ROUND 1/100]" in (run / "flower.log").read_text()
