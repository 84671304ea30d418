"""``bench/dp.py`` end to end for one method, one step (real MiniLM-L6, BBC News)."""

from __future__ import annotations

import json

from bench import dp


def test_dp_bench_one_method(tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n", encoding="utf-8")
    out = tmp_path / "dp.json"
    assert dp.main(["--methods", "bitfit", "--steps", "1", "--warmup", "0", "--repeats", "1",
                    "--out", str(out), "--readme", str(readme)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    cells = report["methods"]["bitfit"]
    assert set(cells) == set(dp.MODES)
    for cell in cells.values():
        assert cell["step_seconds"] > 0 and cell["peak_rss_gb"] > 0.1
    assert "<!-- dp:start -->" in readme.read_text(encoding="utf-8")
