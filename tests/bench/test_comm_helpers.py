"""The benchmark helpers: README marker sections, JSON output, and ``bench/comm.py``'s
measurements on a tiny random BERT (real Flower serialisation, real tuning methods)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

from bench import _common, comm
from securefed.models import Backbone, resolve_backbone, write_tiny_backbone
from strategies.records import payload_to_record, raw_nbytes, serialized_nbytes

CHUNK = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

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


def test_distinct_payload_defeats_flower_deduplication() -> None:
    zeros = {f"layer{i}.lora_B": np.zeros((16, 4), np.float32) for i in range(5)}
    distinct = comm.distinct_payload(zeros)
    assert {k: (v.shape, v.dtype) for k, v in distinct.items()} == {
        k: (v.shape, v.dtype) for k, v in zeros.items()
    }
    # identical tensors travel once; after "training" each one costs its own bytes
    parts = comm.wire_breakdown(payload_to_record(distinct))
    assert parts.num_arrays == 5
    assert serialized_nbytes(payload_to_record(zeros)) < serialized_nbytes(
        payload_to_record(distinct)
    )
    assert parts.total == serialized_nbytes(payload_to_record(distinct))
    assert parts.tensor_data == raw_nbytes(zeros)


def test_wire_breakdown_counts_chunks_of_a_large_tensor() -> None:
    # 3.5 chunks of zeros: the .npy header makes chunk 0 unique, chunks 1 and 2 are
    # identical and travel once, the short tail chunk 3 differs.
    n = (7 * CHUNK // 2) // 4
    zeros = {"big": np.zeros(n, np.float32)}
    record = payload_to_record(zeros)
    array = next(iter(record.values()))
    parts = comm.wire_breakdown(record)
    assert len(array.data) == n * 4 + parts.npy_headers
    assert math.ceil(len(array.data) / CHUNK) == 4
    assert json.loads(array.deflate().split(b"\0", 1)[1])["arraychunk_ids"] == [0, 1, 1, 2]
    assert parts.num_chunks == 3
    assert parts.tensor_data == n * 4 - CHUNK  # the repeated chunk is not sent again
    assert parts.total == serialized_nbytes(record)
    sent = payload_to_record(comm.distinct_payload(zeros))
    distinct = comm.wire_breakdown(sent)
    assert distinct.num_chunks == 4
    assert distinct.tensor_data == n * 4
    assert distinct.total == serialized_nbytes(sent)
    assert distinct.chunk_headers > parts.chunk_headers


def test_roundtrip_returns_the_payload_bit_for_bit() -> None:
    payload = comm.distinct_payload({"a": np.zeros((3, 5), np.float32), "b": np.ones(7)})
    back = comm.roundtrip(payload)
    assert list(back) == ["a", "b"]
    for key, value in payload.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)


# ------------------------------------------------------------- per-method numbers


def test_measure_method_on_a_tiny_backbone(tiny: Backbone) -> None:
    t0 = time.perf_counter()
    row = comm.measure_method("lora", tiny, repeats=2)
    assert time.perf_counter() - t0 < 10

    assert row.method == "lora"
    assert row.params["r"] == 8
    assert row.raw_bytes == 4 * row.trainable_params
    # 2 layers x (query, value) x (A, B) + classifier weight and bias
    assert row.num_tensors == 10
    assert row.breakdown.num_arrays == row.num_tensors
    assert row.breakdown.num_chunks == row.num_tensors
    assert row.breakdown.tensor_data == row.raw_bytes
    assert row.breakdown.total == row.serialized_bytes
    assert row.overhead == pytest.approx((row.serialized_bytes - row.raw_bytes) / row.raw_bytes)
    # every tensor pays at least its .npy header plus two 64-hex ids on the wire
    assert row.overhead_bytes_per_tensor > 128 + 2 * 64
    # the four zero-initialised B factors share one shape: they travel once at init
    assert row.serialized_bytes_init < row.serialized_bytes
    assert row.share_of_full is None
    assert len(row.roundtrip_samples) == 2
    assert row.roundtrip_seconds == pytest.approx(float(np.median(row.roundtrip_samples)))
    assert json.loads(json.dumps(row.to_json()))["breakdown"]["overhead"] == (
        row.serialized_bytes - row.raw_bytes
    )


def test_measure_all_fills_share_of_full_and_goals(tiny: Backbone) -> None:
    rows = comm.measure_all(tiny, methods=["full", "ffa-lora"], repeats=1)
    full, ffa = rows
    assert full.share_of_full == 1.0
    assert ffa.share_of_full == pytest.approx(ffa.serialized_bytes / full.serialized_bytes)
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
    text = readme.read_text()
    assert "old comm table" not in text
    assert "he table" in text
    assert "| lora |" in text
    assert "share of full" in text


def test_real_round_bytes_match_the_measurement(tiny: Backbone, tmp_path: Path) -> None:
    """One in-process lora round: the server's byte counts are the benchmark's numbers."""
    row = comm.measure_method("lora", tiny, repeats=1)
    check = comm.lora_round_check(tiny.path, row, tmp_path)
    assert check["status"] == "completed"
    assert check["clients"] == 2
    assert check["bytes_up_per_client"] == row.serialized_bytes
    assert check["bytes_down_per_client"] == row.serialized_bytes_init
    assert check["up_matches"]
    assert check["down_matches"]
    assert check["raw_matches"]
