"""``bench/round_time.py``: the Flower legacy variants and securefed's own (Message API)
through the real simulation engine on a tiny payload (3 clients, 2 rounds, no
training), aggregate checks, JSON modes, registry."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from bench import _common, _flower_legacy, round_time

PAYLOAD = {
    "lora_A": np.linspace(-0.5, 0.5, 24, dtype=np.float32).reshape(4, 6),
    "head.bias": np.full(5, 0.25, dtype=np.float32),
}
VARIANTS = ("flower-plaintext", "flower-secagg+")
SECUREFED = ("securefed-plaintext", "securefed-secagg")


def _own_ray_processes() -> list[str]:
    """Ray processes of this test process: its descendants, and any process naming a
    Ray session of this PID (``/tmp/ray/session_<date>_<pid>``), orphaned or not."""
    me = psutil.Process()
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if f"_{me.pid}/" in cmd and "/ray/session_" in cmd:
            found.add(f"{proc.pid} {cmd[:120]}")
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found.add(f"{child.pid} {' '.join(child.cmdline())[:120]}")
    return sorted(found)


def _measure_and_check_ray(variants: tuple[str, ...]) -> list[dict[str, Any]]:
    assert _own_ray_processes() == []
    result = round_time.measure(PAYLOAD, [3], 2, variants)
    left = _own_ray_processes()
    for _ in range(20):  # Ray's shutdown returns before its last process exits
        if not left:
            break
        time.sleep(0.25)
        left = _own_ray_processes()
    assert left == [], f"Ray processes left behind: {left}"
    return result


@pytest.fixture(scope="module")
def runs() -> list[dict[str, Any]]:
    return _measure_and_check_ray(VARIANTS)


@pytest.fixture(scope="module")
def securefed_runs() -> list[dict[str, Any]]:
    return _measure_and_check_ray(SECUREFED)


def test_client_spec_and_expected_mean() -> None:
    spec = round_time.ClientSpec(seed=1, scale=0.01)
    shapes = [a.shape for a in PAYLOAD.values()]
    d0, d0_again, d1 = spec.delta(0, shapes), spec.delta(0, shapes), spec.delta(1, shapes)
    assert all(np.array_equal(a, b) for a, b in zip(d0, d0_again, strict=True))
    assert not np.array_equal(d0[0], d1[0])
    assert all(np.abs(d).max() <= 0.01 for d in d0)
    setup = round_time.RoundSetup(PAYLOAD, 3, 2, Path("unused.json"), spec)
    g = setup.initial_arrays()
    replies = [spec.reply(i, g) for i in range(3)]
    w = np.array([spec.weight(i) for i in range(3)], dtype=float)
    manual = [sum(w[i] * replies[i][k] for i in range(3)) / w.sum() for k in range(2)]
    assert all(np.allclose(a, b, atol=1e-7)
               for a, b in zip(setup.expected(g), manual, strict=True))


def test_round_timer_writes_json(tmp_path: Path) -> None:
    timer = round_time.RoundTimer(tmp_path / "t.json")
    with timer.round(1):
        pass
    timer.start(2)
    timer.stop(2)
    assert timer.check(1, [np.ones(2)], [np.ones(2) + 1e-3]) == pytest.approx(1e-3)
    assert timer.check(2, [np.ones(2)], [np.ones(3)]) == float("inf")
    data = json.loads(timer.write({"tolerance": 1.0}).read_text())
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert data["info"] == {"tolerance": 1.0}
    assert data["rounds"][1]["max_abs_error"] is None  # inf -> null (strict JSON)


def test_registry_rejects_duplicates() -> None:
    round_time._load_variants()
    assert {*VARIANTS, *SECUREFED, "flower-secagg+plan"} <= set(round_time.VARIANTS)
    with pytest.raises(ValueError, match="already registered"):
        round_time.register_variant("flower-plaintext")(_flower_legacy.flower_plaintext)


def test_even_share_count_below_n_is_refused(tmp_path: Path) -> None:
    setup = round_time.RoundSetup(PAYLOAD, 5, 2, tmp_path / "t.json")
    with pytest.raises(ValueError, match="odd"):
        _flower_legacy.flower_secaggplus(setup, num_shares=4, reconstruction_threshold=3)


def test_both_flower_variants_aggregate_correctly(runs: list[dict[str, Any]]) -> None:
    assert [r["variant"] for r in runs] == list(VARIANTS)
    keys = {"variant", "num_clients", "rounds", "round_seconds", "warmup_seconds",
            "median_seconds", "max_abs_error", "round_errors", "info",
            "ratio_to_baseline", "simulation_wall_seconds"}
    for r in runs:
        assert keys <= set(r)
        assert r["num_clients"] == 3 and len(r["round_seconds"]) == 2
        assert r["median_seconds"] == r["round_seconds"][1] > 0
        assert r["max_abs_error"] <= r["info"]["tolerance"]
    plain, secagg = runs
    assert plain["ratio_to_baseline"] == 1.0
    assert plain["max_abs_error"] < 1e-6
    # SecAgg+ is lossy (quantisation) but bounded; it is not bit-exact
    assert 0 < secagg["max_abs_error"] <= secagg["info"]["tolerance"] < 1e-4
    assert secagg["info"]["secaggplus"]["num_shares"] == 3


def test_report_renders_and_round_trips(runs: list[dict[str, Any]], tmp_path: Path) -> None:
    report = {"benchmark": "round_time", "machine": _common.machine_info(),
              "config": {"backbone": "tiny", "num_labels": 5, "lora_r": 8,
                         "lora_alpha": 16.0, "params": 29, "tensors": 2, "rounds": 2,
                         "scale": 0.01},
              "runs": runs}
    path = _common.write_json(tmp_path / "round_time.json", report)
    back = json.loads(path.read_text())
    assert {"benchmark", "machine", "config", "runs"} <= set(back)
    md = round_time.render_markdown(back)
    assert "÷ flower-plaintext" in md and "÷ securefed-plaintext" in md
    assert "| 3 | flower-secagg+ |" in md and "| 3 / 2 |" in md
    assert "Protocol only (mode `protocol-only`)" in md
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n")
    _common.update_readme_section("round_time", md, readme)
    assert "<!-- round_time:start -->" in readme.read_text()


def test_securefed_variants_aggregate_correctly(
        securefed_runs: list[dict[str, Any]]) -> None:
    assert [r["variant"] for r in securefed_runs] == list(SECUREFED)
    plain, secagg = securefed_runs
    for r in securefed_runs:
        assert r["num_clients"] == 3 and len(r["round_seconds"]) == 2
        assert all(e is not None for e in r["round_errors"])
        assert r["max_abs_error"] <= r["info"]["tolerance"]
        assert r["info"]["api"] == "message"
        assert r["ratio_to_baseline"] is None  # flower-plaintext did not run
    assert plain["ratios"]["securefed-plaintext"] == 1.0
    assert plain["max_abs_error"] < 1e-6
    # quantised, so not bit-exact, but within the bound (~1e-8 step x 1000/303 x n)
    assert 0 < secagg["max_abs_error"] <= secagg["info"]["tolerance"] < 1e-4
    sa = secagg["info"]["securefed_secagg"]
    assert sa["choice"] == "plan" and 2 <= sa["threshold"] <= sa["degree"]
    assert sa["clipping_range"] == 8.0 and sa["bits"] == 32 and sa["max_weight"] == 1000
    assert secagg["ratios"]["securefed-plaintext"] > 0


def test_timed_strategy_spans_train_only(tmp_path: Path) -> None:
    """The timer starts in configure_train and stops when aggregate_train returns."""
    from bench._securefed_variants import TimedStrategy
    from strategies.records import payload_to_record

    setup = round_time.RoundSetup(PAYLOAD, 3, 2, tmp_path / "t.json")
    mean = payload_to_record(dict(zip(PAYLOAD, setup.expected(setup.initial_arrays()),
                                      strict=True)))

    class Inner:
        def configure_train(self, *args: Any) -> list[Any]:
            return []

        def aggregate_train(self, rnd: int, replies: Any) -> tuple[Any, Any]:
            time.sleep(0.05)
            return mean, None

    timer = setup.timer()
    strategy = TimedStrategy(Inner(), setup, timer)  # type: ignore[arg-type]
    strategy.configure_train(1, payload_to_record(PAYLOAD), None, None)  # type: ignore[arg-type]
    strategy.aggregate_train(1, [])
    assert timer.seconds[1] >= 0.05
    assert timer.errors[1] < 1e-6


def test_client_spec_work_is_a_no_op_without_training() -> None:
    spec = round_time.ClientSpec()
    assert spec.train_steps == 0
    spec.work(0, list(PAYLOAD.values()))  # must not import torch models


def test_report_modes_merge(runs: list[dict[str, Any]]) -> None:
    machine = _common.machine_info()
    cfg = {"backbone": "tiny", "num_labels": 5, "lora_r": 8, "lora_alpha": 16.0,
           "params": 29, "tensors": 2, "rounds": 2, "scale": 0.01}
    legacy = {"benchmark": "round_time", "machine": machine, "config": cfg, "runs": runs}
    trained = {"machine": machine, "config": {**cfg, "train_steps": 4}, "runs": runs}
    report = round_time.merge_report(legacy, round_time.mode_name(4), trained)
    assert set(report["modes"]) == {"protocol-only", "train-4-steps"}
    assert report["runs"] == runs and report["config"] == cfg  # top level: protocol-only
    again = round_time.merge_report(report, "protocol-only",
                                    {"machine": machine, "config": cfg, "runs": runs[:1]})
    assert set(again["modes"]) == {"protocol-only", "train-4-steps"}
    assert again["runs"] == runs[:1]
    md = round_time.render_markdown(again)
    assert md.index("Protocol only") < md.index("--train-steps 4")
