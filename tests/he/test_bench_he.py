"""``bench/he.py`` end to end on a tiny payload (JSON and README section written)."""

from __future__ import annotations

import json

from bench import he


def test_bench_he_tiny(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n", encoding="utf-8")
    out = tmp_path / "he.json"
    assert he.main(["--clients", "2", "--params", "300", "--repeats", "1",
                    "--out", str(out), "--readme", str(readme)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["label"]: r for r in report["rows"]}
    assert set(rows) == {label for label, _ in he.SETTINGS}
    assert rows["default"]["error_goal_passed"]
    assert rows["former-default"]["ciphertext_bytes"] < rows["default"]["ciphertext_bytes"]
    paths = {p["label"]: p for p in report["paths"]}
    assert set(paths) == {label for label, _, _ in he.PATHS}
    new, old = paths["authenticated (default)"], paths["former"]
    assert old["flooding_sigma"] == 0 and new["flooding_sigma"] > 0
    assert new["max_abs_error"] <= new["error_bound"] < 1e-9
    assert new["bytes_to_authority"] > old["bytes_to_authority"]  # every ciphertext
    assert paths["authenticated, former params"]["flooding_sigma"] > 1e-3
    text = readme.read_text(encoding="utf-8")
    assert "<!-- he:start -->" in text and "CKKS aggregation" in text
    assert "Authenticated terms and noise flooding" in text
