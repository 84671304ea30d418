"""The benchmark helpers: README marker sections, JSON output, and ``bench/comm.py``'s
measurements on a tiny random BERT (real Flower serialisation, real tuning methods)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

from bench import _common, comm
from securefed.methods import create_method
from securefed.models import Backbone, build_classifier, resolve_backbone, write_tiny_backbone
from strategies.records import raw_nbytes, wire_nbytes

CHUNK = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
Payload = dict[str, np.ndarray]

DOC = """# Benchmarks

Intro text.

<!-- comm:start -->
old comm table
<!-- comm:end -->

Between sections.

<!-- he:start -->
he table
<!-- he:end -->
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    folder = write_tiny_backbone("bert", tmp_path_factory.mktemp("tiny") / "b")
    return resolve_backbone(str(folder))


# --------------------------------------------------------------- README markers


def test_marker_replacement_touches_only_its_section() -> None:
    out = _common.replace_marker_section(DOC, "comm", "\n\n| new | table |\n\n")
    assert "old comm table" not in out
    assert "<!-- comm:start -->\n| new | table |\n<!-- comm:end -->" in out
    # everything outside the comm markers is byte-identical
    before, after = DOC.split("<!-- comm:start -->"), out.split("<!-- comm:start -->")
    assert before[0] == after[0]
    assert DOC.split("<!-- comm:end -->")[1] == out.split("<!-- comm:end -->")[1]
    # idempotent
    assert _common.replace_marker_section(out, "comm", "| new | table |") == out


def test_marker_replacement_appends_a_new_section_once() -> None:
    out = _common.replace_marker_section(DOC, "dp", "dp table")
    assert out.startswith(DOC.rstrip())
    assert out.endswith("<!-- dp:start -->\ndp table\n<!-- dp:end -->\n")
    again = _common.replace_marker_section(out, "dp", "dp table v2")
    assert again.count("<!-- dp:start -->") == 1
    assert "dp table v2" in again
    assert "dp table\n" not in again
    empty = _common.replace_marker_section("", "dp", "x")
    assert empty == "<!-- dp:start -->\nx\n<!-- dp:end -->\n"


@pytest.mark.parametrize(
    "text",
    [
        "<!-- comm:start -->\nno end\n",
        "no start\n<!-- comm:end -->\n",
        "<!-- comm:end -->\nreversed\n<!-- comm:start -->\n",
        "<!-- comm:start -->a<!-- comm:end -->\n<!-- comm:start -->b<!-- comm:end -->\n",
    ],
    ids=["no-end", "no-start", "reversed", "duplicated"],
)
def test_malformed_markers_are_rejected(text: str) -> None:
    with pytest.raises(_common.MarkerError, match="comm"):
        _common.replace_marker_section(text, "comm", "body")


def test_section_names_cannot_forge_markers() -> None:
    with pytest.raises(ValueError, match="invalid section name"):
        _common.marker_names("comm:end -->")
    with pytest.raises(ValueError, match="invalid section name"):
        _common.marker_names("")


def test_update_readme_section_leaves_a_broken_file_unchanged(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(DOC)
    _common.update_readme_section("he", "he v2", readme)
    assert "he v2" in readme.read_text()
    assert "old comm table" in readme.read_text()
    broken = DOC.replace("<!-- comm:end -->", "")
    readme.write_text(broken)
    with pytest.raises(_common.MarkerError):
        _common.update_readme_section("comm", "x", readme)
    assert readme.read_text() == broken


def test_write_json_is_strict_and_creates_parents(tmp_path: Path) -> None:
    path = _common.write_json(tmp_path / "a" / "b.json", {"x": math.nan, "y": [math.inf, 1.5]})
    assert json.loads(path.read_text()) == {"x": None, "y": [None, 1.5]}


def test_markdown_table_escapes_pipes_and_checks_widths() -> None:
    table = _common.markdown_table(["a", "b"], [["x|y", 1]], "lr")
    assert table.splitlines() == ["| a | b |", "|:---|---:|", "| x\\|y | 1 |"]
    with pytest.raises(ValueError, match="cells"):
        _common.markdown_table(["a", "b"], [["only one"]])


# ---------------------------------------------------------------- wire accounting


def test_wire_size_does_not_depend_on_values_below_a_chunk() -> None:
    # LoRA-like: several all-zero B factors, identical to each other
    zeros: Payload = {f"layer{i}.lora_B": np.zeros((16, 4), np.float32) for i in range(5)}
    zeros["head.bias"] = np.zeros(3, np.float64)
    rand = comm.random_like(zeros, seed=1)
    assert {k: (v.shape, v.dtype) for k, v in rand.items()} == {
        k: (v.shape, v.dtype) for k, v in zeros.items()
    }
    assert all(np.any(v != 0) for v in rand.values())
    # one flat array per dtype: identical tensors no longer travel once
    assert comm.wire_bytes(zeros) == wire_nbytes(zeros) == wire_nbytes(rand)


def test_wire_bytes_rejects_value_dependent_sizes() -> None:
    # 3.5 chunks of zeros: chunk 0 starts with the .npy header, chunks 1 and 2 hold the
    # same bytes and travel once, the short chunk 3 differs
    zeros = {"big": np.zeros((7 * CHUNK // 2) // 4, np.float32)}
    assert wire_nbytes(zeros) < wire_nbytes(comm.random_like(zeros)) - CHUNK
    with pytest.raises(AssertionError, match="depends on the tensor values"):
        comm.wire_bytes(zeros)


def _mixed_payload() -> Payload:
    return {
        "a": np.array([[1.5, np.nan, -0.0], [np.inf, 2.0, 3.0]], np.float32),
        "b": np.arange(7, dtype=np.int64),
        "c": np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32),
        "d": np.zeros((2, 0), np.float64),
    }


def test_roundtrip_returns_the_payload_bit_for_bit() -> None:
    payload = _mixed_payload()
    back = comm.roundtrip(payload)
    assert list(back) == ["a", "b", "c", "d"]
    for key, value in payload.items():
        assert back[key].dtype == value.dtype
        assert back[key].shape == value.shape
        assert back[key].tobytes() == value.tobytes()  # NaN and -0.0 included
    comm.check_roundtrip(payload)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: dict(reversed(list(p.items()))),
        lambda p: {**p, "a": p["a"].astype(np.float64)},
        lambda p: {**p, "c": -p["c"]},
        lambda p: {**p, "a": p["a"] + np.float32(0.0)},  # -0.0 becomes 0.0, NaN stays
    ],
    ids=["order", "dtype", "values", "signed-zero"],
)
def test_check_roundtrip_catches_any_change(monkeypatch: pytest.MonkeyPatch,
                                            corrupt: Callable[[Payload], Payload]) -> None:
    real = comm.roundtrip
    monkeypatch.setattr(comm, "roundtrip", lambda p: corrupt(real(p)))
    with pytest.raises(AssertionError, match="round trip changed"):
        comm.check_roundtrip(_mixed_payload())


# ------------------------------------------------------------- per-method numbers


def test_measure_method_on_a_tiny_backbone(tiny: Backbone) -> None:
    row = comm.measure_method("lora", tiny, repeats=2)
    method = create_method("lora")
    model = method.apply(build_classifier(tiny, 5, seed=0), tiny.architecture, seed=0)
    payload = method.payload(model)

    assert row.method == "lora"
    assert row.params["r"] == 8
    # 2 layers x (query, value) x (A, B) + classifier weight and bias, all float32
    assert row.num_tensors == len(payload) == 10
    assert row.num_arrays == 1
    assert row.trainable_params == sum(v.size for v in payload.values())
    assert row.raw_bytes == raw_nbytes(payload) == 4 * row.trainable_params
    assert row.wire_bytes == wire_nbytes(payload)
    assert row.overhead == pytest.approx((row.wire_bytes - row.raw_bytes) / row.raw_bytes)
    # the overhead's parts: layout JSON as records.py writes it, one .npy header, objects
    layout = json.dumps([[k, "float32", list(v.shape)] for k, v in payload.items()])
    assert row.layout_json_bytes == len(layout.encode())
    assert row.npy_header_bytes % 64 == 0
    assert 0 < row.npy_header_bytes <= 128
    assert row.layout_json_bytes + row.npy_header_bytes + row.object_bytes == (
        row.wire_bytes - row.raw_bytes
    )
    # the record's and the array's headers carry at least three 64-hex content ids
    assert row.object_bytes > 3 * 64
    assert row.share_of_full is None
    assert len(row.roundtrip_samples) == 2
    assert row.roundtrip_seconds == pytest.approx(float(np.median(row.roundtrip_samples)))
    note = comm.overhead_note(dataclasses.asdict(row))
    assert f"{row.layout_json_bytes:,} B" in note
    assert "one `.npy` header" in note


def test_measure_all_fills_share_of_full_and_goals(tiny: Backbone) -> None:
    rows = comm.measure_all(tiny, methods=["full", "ffa-lora"], repeats=1)
    full, ffa = rows
    assert full.share_of_full == 1.0
    assert ffa.share_of_full == pytest.approx(ffa.wire_bytes / full.wire_bytes)
    # FFA-LoRA freezes A: half of LoRA's factor tensors, B only (+ head)
    assert ffa.num_tensors == 2 * 2 + 2
    goals = comm.evaluate_goals(rows)
    assert [(g["method"], g["metric"]) for g in goals] == [
        ("ffa-lora", "share_of_full"),
        ("ffa-lora", "overhead"),
    ]
    by_metric = {g["metric"]: g for g in goals}
    assert by_metric["overhead"]["passed"] is (ffa.overhead <= comm.GOAL_MAX_OVERHEAD)
    assert ffa.share_of_full is not None
    assert by_metric["share_of_full"]["passed"] is (
        ffa.share_of_full <= comm.GOAL_MAX_SHARE_OF_FULL
    )
    # without `full` the share goal cannot pass
    alone = comm.evaluate_goals(comm.measure_all(tiny, methods=["ffa-lora"], repeats=1))
    assert alone[0]["value"] is None
    assert alone[0]["passed"] is False


def test_main_writes_json_and_only_its_readme_section(tiny: Backbone, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(DOC)
    out = tmp_path / "results" / "comm.json"
    code = comm.main(["--backbone", tiny.path, "--out", str(out), "--readme", str(readme),
                      "--repeats", "1", "--skip-round"])
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["method"] for r in report["rows"]] == comm.METHODS.names()
    assert {"python", "cpu_count", "date", "versions"} <= set(report["machine"])
    assert {"torch", "flwr"} <= set(report["machine"]["versions"])
    assert report["lora_round"] is None
    assert len(report["goals"]) == 2 * len(comm.LORA_FAMILY)
    assert "layout JSON" in report["overhead_note"]
    text = readme.read_text()
    assert "old comm table" not in text
    assert "he table" in text
    assert "| lora |" in text
    assert "share of full" in text
    assert report["overhead_note"] in text


def test_real_round_bytes_match_the_measurement(tiny: Backbone, tmp_path: Path) -> None:
    """One in-process lora round: the server's byte counts are the benchmark's numbers."""
    row = comm.measure_method("lora", tiny, repeats=1)
    check = comm.lora_round_check(tiny.path, row, tmp_path)
    assert check["status"] == "completed"
    assert check["clients"] == 2
    assert check["bytes_up_per_client"] == check["expected_bytes_up"] == row.wire_bytes
    assert check["bytes_down_per_client"] == check["expected_bytes_down"] == row.wire_bytes
    assert comm.round_ok(check)
    for key in ("up_matches", "down_matches", "benchmark_matches", "raw_matches"):
        assert not comm.round_ok({**check, key: False})
    assert not comm.round_ok({**check, "status": "failed"})
