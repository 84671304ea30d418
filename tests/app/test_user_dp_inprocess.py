"""User-level DP through the real ServerApp and ClientApp (mods included).

Server- and client-side clipping in plaintext, client-side clipping under SecAgg+
masking together with sample-level DP-SGD, Poisson client sampling, the strict rule on
missing clients, the budget stop and the configuration refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from securefed.app.launcher import preflight
from securefed.exceptions import ConfigError, PrivacyError
from securefed.privacy.accountants import create_accountant
from securefed.report.recorder import read_metrics
from tests.app.conftest import tiny_config
from tests.app.test_secagg_inprocess import N, _cfg, _close, _drop_at, _final, _run

USER = {"clipping": "server-fixed", "noise_multiplier": 0.8, "clipping_norm": 0.5,
        "randomness": "seeded", "sampling": "fixed", "delta": 1e-3, "target_epsilon": 100.0}


def _rows(run_dir: Path, level: str) -> list[dict]:
    lines = (run_dir / "privacy.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["level"] == level]


def test_server_side_user_dp_grows_epsilon_with_rounds(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, "lora", rounds=3, user_dp=USER)
    summary = _run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["user_dp"] == "server-fixed"
    rows = _rows(tmp_path, "user")
    assert [r["round"] for r in rows] == [1, 2, 3]
    eps = [r["user_epsilon"] for r in rows]
    assert eps[0] < eps[1] < eps[2] == summary["user_level_epsilon"]
    reference = create_accountant("rdp")
    reference.step(noise_multiplier=0.8, sample_rate=1.0, num_steps=3)  # fixed: q = 1
    assert eps[2] == pytest.approx(reference.get_epsilon(1e-3))
    assert all(r["clients_in_aggregate"] == N and r["user_clip_norm"] == 0.5 for r in rows)
    assert summary["epsilon"] is None and summary["delta"] == 1e-3
    assert [r.get("user_epsilon") for r in read_metrics(tmp_path / "metrics.jsonl")[1:]] == eps
    assert (tmp_path / "epsilon.png").is_file()


@pytest.mark.parametrize("mode", ["secagg", "ckks"])
def test_client_clipping_under_masking_equals_plaintext(tiny_backbones, tmp_path,
                                                        mode) -> None:
    """Clients clip inside the masking mods: with DP-SGD on the clients too, the
    released adapter under SecAgg+ / CKKS is the plaintext one (same seeded noise)."""
    tables = {"user_dp": {**USER, "clipping": "client-fixed"},
              "dp": {"mode": "sample", "randomness": "seeded", "target_epsilon": 8.0}}
    plain = _cfg(tiny_backbones["bert"], tmp_path / "plain", "ffa-lora", rounds=2, **tables)
    _run(plain, tmp_path / "plain")
    expected = _final(plain)
    cfg = _cfg(tiny_backbones["bert"], tmp_path / mode, "ffa-lora", rounds=2,
               secure={"mode": mode, "clipping_range": 2.0}, **tables)
    summary = _run(cfg, tmp_path / mode)
    assert summary["status"] == "completed" and summary["secure_mode"] == mode
    _close(_final(cfg), expected, atol=1e-3)  # quantisation vs noise std z·C/m = 0.1
    users = _rows(tmp_path / mode, "user")
    assert len(users) == 2
    for row in users:  # SecAgg+ quantisation widens the sensitivity; the noise covers it
        slack = row["quantization_slack"]
        assert (0 < slack < 1e-3 * row["user_clip_norm"]) if mode == "secagg" else slack == 0
        assert row["noise_std"] == pytest.approx(
            row["update_noise_multiplier"] * (row["user_clip_norm"] + slack)
            / row["denominator"])
    assert len(_rows(tmp_path / mode, "sample")) == 2 * N
    assert 0 < summary["epsilon"] <= 8.0 and summary["user_level_epsilon"] > 0


def test_poisson_client_sampling_is_accounted_with_amplification(tiny_backbones,
                                                                tmp_path) -> None:
    cfg = tiny_config(tiny_backbones["bert"], tmp_path, method_name="bitfit", rounds=3,
                      num_clients=6, per_round=3,
                      federation={"evaluate_clients": 0, "min_replies": 1},
                      experiment={"seed": 1},
                      user_dp={**USER, "sampling": "poisson", "delta": 1e-2})
    summary = _run(cfg, tmp_path)
    rows = _rows(tmp_path, "user")
    assert summary["status"] == "completed" and {r["user_sample_rate"] for r in rows} == {0.5}
    assert all(r["denominator"] == 3 for r in rows)  # fixed denominator: q·N
    assert len({r["clients_in_aggregate"] for r in rows}) > 1  # the sample size varies
    reference = create_accountant("rdp")
    reference.step(noise_multiplier=0.8, sample_rate=0.5, num_steps=3)
    assert summary["user_level_epsilon"] == pytest.approx(reference.get_epsilon(1e-2))


def test_missing_client_under_masking_is_a_privacy_error(tiny_backbones, tmp_path) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, "ffa-lora",
               user_dp={**USER, "clipping": "client-fixed"}, secure={"mode": "secagg"},
               federation={"min_replies": 2})
    with pytest.raises(PrivacyError, match="3 of 4 sampled clients are in the aggregate"):
        _run(cfg, tmp_path, drop=_drop_at("masked-input", {1001}))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "nothing is released" in summary["reason"]


def test_user_budget_stops_the_run_and_keeps_the_last_model(tiny_backbones, tmp_path) -> None:
    one = create_accountant("rdp")
    one.step(noise_multiplier=0.8, sample_rate=1.0, num_steps=2)
    cfg = _cfg(tiny_backbones["bert"], tmp_path, "bitfit", rounds=4,
               user_dp={**USER, "budget_epsilon": one.get_epsilon(1e-3) * 1.01})
    summary = _run(cfg, tmp_path)
    assert summary["status"] == "stopped" and "round 3 would take" in summary["reason"]
    assert [r["round"] for r in _rows(tmp_path, "user")] == [1, 2]
    assert (tmp_path / "adapter").is_dir()


@pytest.mark.parametrize(("user", "secure", "match"), [
    ({"clipping": "server-fixed"}, "secagg", "sees no individual update"),
    ({"clipping": "server-adaptive"}, "ckks", "sees no individual update"),
    ({"clipping": "client-adaptive"}, "secagg", "clipped bit would reach the server"),
    ({"clipping": "client-fixed", "delta": 0.5}, "none", "below 1 / num_clients"),
    ({"clipping": "server-adaptive", "noise_multiplier": 5.0}, "none", "clipped_count_stddev"),
])
def test_impossible_combinations_are_refused_before_the_run(tiny_backbones, tmp_path,
                                                            user, secure, match) -> None:
    cfg = _cfg(tiny_backbones["bert"], tmp_path, "ffa-lora", user_dp={**USER, **user},
               secure={"mode": secure})
    with pytest.raises(ConfigError, match=match):
        preflight(cfg)


def test_wrapping_refuses_server_side_clipping_under_masking_without_preflight(
        tiny_backbones, tmp_path) -> None:
    """`flwr run` reaches the ServerApp without `preflight`: the wrapper checks too."""
    from securefed.app.central_dp import wrap_user_dp
    from strategies.adapter_fedavg import AdapterFedAvg

    cfg = _cfg(tiny_backbones["bert"], tmp_path, "ffa-lora", user_dp=USER,
               secure={"mode": "secagg"})
    inner = AdapterFedAvg(clients_per_round=N, min_replies=N, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="sees no individual update"):
        wrap_user_dp(cfg, inner, inner, None)


def test_unknown_clipping_names_the_valid_ones() -> None:
    from securefed.config import ExperimentConfig

    with pytest.raises(ConfigError, match="client-fixed"):
        ExperimentConfig.from_dict({"user_dp": {"clipping": "server"}})
