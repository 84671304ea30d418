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
    assert rows["default"]["ciphertext_bytes"] < rows["tenseal-tutorial"]["ciphertext_bytes"]
    text = readme.read_text(encoding="utf-8")
    assert "<!-- he:start -->" in text and "CKKS aggregation" in text
