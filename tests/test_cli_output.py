"""What the ``securefed`` command prints: --version, and tables uncut in a pipe."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from typer.testing import CliRunner

from securefed.cli import app

runner = CliRunner()  # its stdout is not a terminal: a pipe, as far as rich can tell


def test_version_names_securefed_and_its_key_libraries() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    line = res.output.strip()
    assert line.startswith(f"securefed {version('securefed')} (")
    for dist in ("flwr", "torch", "peft", "transformers"):
        assert f"{dist} {version(dist)}" in line, dist
    assert "\n" not in line


def test_methods_table_is_not_cut_when_piped(tiny_backbones) -> None:
    from securefed.methods.inventory import method_inventory

    res = runner.invoke(app, ["methods", "--backbone", str(tiny_backbones["bert"])])
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    lines = res.output.splitlines()
    for col in ("trainable params", "% of full", "payload bytes", "aggregation",
                "exact under sum", "export"):
        assert any(col in line for line in lines), col  # headers on one line each
    for row in method_inventory(str(tiny_backbones["bert"]), num_labels=5):
        (line,) = [ln for ln in lines if ln.startswith(f"│ {row['method']} ")]
        for cell in (f"{row['trainable_params']:,}", f"{row['payload_bytes']:,}",
                     row["aggregation"], str(row["exact_under_sum"]), row["export_format"]):
            assert cell in line, (row["method"], cell)


def test_methods_table_is_whole_through_a_real_pipe(tiny_backbones) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "securefed.cli", "methods", "--backbone",
         str(tiny_backbones["bert"])], capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout and "securefed-safetensors" in proc.stdout


def test_secagg_plan_table_is_not_cut_when_piped() -> None:
    res = runner.invoke(app, ["secagg", "plan", "--clients", "1000", "--params", "75653",
                              "--dropout-rate", "0.1"])
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    assert any("recovery failure (upper bound)" in line for line in res.output.splitlines())
