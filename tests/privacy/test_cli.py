"""``securefed privacy``: JSON keys, human output, error exits."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from securefed.privacy.cli import privacy_app

runner = CliRunner()
EPS_ARGS = ["epsilon", "--accountant", "rdp", "--noise-multiplier", "1.5",
            "--sample-rate", "0.04", "--steps", "2250", "--delta", "1e-5"]
NOISE_ARGS = ["noise", "--accountant", "rdp", "--target-epsilon", "8", "--sample-rate", "0.04",
              "--steps", "2000", "--delta", "1e-5"]


def test_epsilon_json() -> None:
    res = runner.invoke(privacy_app, [*EPS_ARGS, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"epsilon", "accountant", "delta", "noise_multiplier", "sample_rate",
                        "steps", "upper_bound"}
    assert out["upper_bound"] is True
    assert out["epsilon"] == pytest.approx(7.32911117143, rel=1e-6)
    assert (out["accountant"], out["delta"], out["noise_multiplier"], out["sample_rate"],
            out["steps"]) == ("rdp", 1e-5, 1.5, 0.04, 2250)


def test_epsilon_human() -> None:
    res = runner.invoke(privacy_app, EPS_ARGS)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("epsilon = 7.32911") and "rdp" in res.stdout


def test_epsilon_prints_gdp_labelled_as_an_approximation() -> None:
    gdp = _replace(EPS_ARGS, "--accountant", "gdp")
    res = runner.invoke(privacy_app, gdp)
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert text.startswith("epsilon ~ ") and "APPROXIMATION" in text
    assert "not valid for a budget" in text
    out = json.loads(runner.invoke(privacy_app, [*gdp, "--json"]).stdout)
    assert out["upper_bound"] is False and out["accountant"] == "gdp" and out["epsilon"] > 0


def test_noise_json() -> None:
    res = runner.invoke(privacy_app, [*NOISE_ARGS, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"noise_multiplier", "epsilon", "target_epsilon", "accountant", "delta",
                        "sample_rate", "steps"}
    assert out["epsilon"] <= out["target_epsilon"] == 8.0
    assert out["noise_multiplier"] == pytest.approx(1.3562, abs=2e-3)
    assert (out["accountant"], out["steps"]) == ("rdp", 2000)


def test_noise_human() -> None:
    res = runner.invoke(privacy_app, NOISE_ARGS)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("noise_multiplier = 1.35")


def _replace(args: list[str], opt: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(opt) + 1] = value
    return out


@pytest.mark.parametrize(("base", "opt", "value", "message"), [
    (EPS_ARGS, "--sample-rate", "0", "sample_rate must be in (0, 1]"),
    (EPS_ARGS, "--sample-rate", "1.5", "sample_rate must be in (0, 1]"),
    (EPS_ARGS, "--noise-multiplier", "-1", "noise_multiplier must be"),
    (EPS_ARGS, "--delta", "1", "delta must be in (0, 1)"),
    (EPS_ARGS, "--steps", "0", "steps must be"),
    (EPS_ARGS, "--accountant", "[bold]moments", "unknown accountant '[bold]moments'"),
    (NOISE_ARGS, "--sample-rate", "2", "sample_rate must be in (0, 1]"),
    (NOISE_ARGS, "--delta", "1.5", "delta must be in (0, 1)"),
    (NOISE_ARGS, "--target-epsilon", "-3", "target_epsilon must be"),
    (NOISE_ARGS, "--accountant", "nope", "valid choices: gdp, pld, prv, rdp"),
    (NOISE_ARGS, "--accountant", "gdp", "valid accountants: pld, prv, rdp"),
])
def test_invalid_arguments_exit_2_with_message(base, opt, value, message) -> None:
    res = runner.invoke(privacy_app, [*_replace(base, opt, value), "--json"])
    assert res.exit_code == 2
    assert res.stdout == ""
    assert "error:" in res.stderr
    assert message in " ".join(res.stderr.split())  # rich may wrap long lines


def test_unreachable_target_exit_2() -> None:
    res = runner.invoke(privacy_app, _replace(NOISE_ARGS, "--target-epsilon", "0.01"))
    assert res.exit_code == 2 and "unreachable" in res.stderr


def test_mounts_as_sub_command() -> None:
    import typer

    root = typer.Typer()

    @root.command()
    def other() -> None:  # a second command, as in the real ``securefed`` app
        """Unused."""

    root.add_typer(privacy_app, name="privacy")
    res = runner.invoke(root, ["privacy", *EPS_ARGS, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["accountant"] == "rdp"
    assert "epsilon" in runner.invoke(root, ["privacy", "--help"]).stdout
