"""A run directory holds exactly one run: refusal, --overwrite, manifest, interruption."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest

from securefed.rundir import (
    MANIFEST,
    RunDirError,
    is_run_dir,
    last_completed_round,
    mark_interrupted,
    prepare_run_dir,
    verify_manifest,
    write_manifest,
)

CONFIG = '[experiment]\nname = "t"\nseed = 3\n\n[model]\nbackbone = "minilm-l6"\n\n' \
         '[data]\ndataset = "bbc-news"\nnum_clients = 4\n\n[method]\nname = "lora"\n\n' \
         '[federation]\nrounds = 5\nclients_per_round = 2\n'


def _old_dp_run(path: Path) -> Path:
    """What a finished DP run leaves: the files that used to survive a rerun."""
    (path / "adapter").mkdir(parents=True)
    (path / "config.toml").write_text(CONFIG)
    (path / "summary.json").write_text(json.dumps({"status": "completed", "epsilon": 7.99}))
    (path / "privacy.jsonl").write_text('{"round": 1, "level": "sample", "epsilon": 7.99}\n')
    (path / "epsilon.png").write_bytes(b"\x89PNG old")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"old")
    return path


def test_missing_or_empty_directory_is_used(tmp_path) -> None:
    assert prepare_run_dir(tmp_path / "new" / "run") == (tmp_path / "new" / "run").resolve()
    assert (tmp_path / "new" / "run").is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_run_dir(tmp_path / "empty").is_dir()


def test_a_used_directory_is_refused_naming_it_and_overwrite(tmp_path) -> None:
    run = _old_dp_run(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"run directory .*run is not empty.*--overwrite"):
        prepare_run_dir(run)
    assert (run / "privacy.jsonl").is_file()  # nothing was touched


def test_overwrite_leaves_no_file_of_the_earlier_run(tmp_path) -> None:
    run = _old_dp_run(tmp_path / "run")
    (run / ".hidden").write_text("x")
    assert prepare_run_dir(run, overwrite=True) == run.resolve()
    assert list(run.iterdir()) == []


def test_a_previous_manifest_marks_a_run_directory(tmp_path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"1")
    write_manifest(tmp_path, "failed")
    assert is_run_dir(tmp_path)
    prepare_run_dir(tmp_path, overwrite=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("planted", [
    {"notes.txt": "my thesis"},                                     # an arbitrary folder
    {"config.toml": CONFIG},                                        # a config, no run file
    {"config.toml": "[tool]\nx = 1\n", "summary.json": "{}"},       # not a securefed config
    {"manifest.json": "{}"},                                        # not our manifest
    {".git/HEAD": "ref", "config.toml": CONFIG, "summary.json": "{}"},  # a repository
])
def test_overwrite_refuses_a_folder_that_is_not_a_run_directory(tmp_path, planted) -> None:
    for name, text in planted.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(RunDirError, match=r"--overwrite refused.*not look like a securefed run"):
        prepare_run_dir(tmp_path, overwrite=True)
    assert all((tmp_path / name).is_file() for name in planted)


def test_overwrite_refuses_the_working_directory_and_its_parents(tmp_path, monkeypatch) -> None:
    run = _old_dp_run(tmp_path / "run")
    (run / "sub").mkdir()
    monkeypatch.chdir(run / "sub")
    with pytest.raises(RunDirError, match="--overwrite refused"):
        prepare_run_dir(run, overwrite=True)


def test_resume_is_not_implemented_yet(tmp_path) -> None:
    with pytest.raises(RunDirError, match="resuming is not implemented"):
        prepare_run_dir(_old_dp_run(tmp_path / "run"), resume=True)


def test_a_file_is_not_a_run_directory(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        prepare_run_dir(tmp_path / "f", overwrite=True)


def test_manifest_lists_every_file_with_a_hash_that_verifies(tmp_path) -> None:
    run = _old_dp_run(tmp_path)
    manifest = write_manifest(run)
    assert manifest["status"] == "completed"  # from summary.json
    assert manifest["securefed_version"]
    paths = [f["path"] for f in manifest["files"]]
    assert paths == sorted(p.relative_to(run).as_posix() for p in run.rglob("*")
                           if p.is_file() and p.name != MANIFEST)
    assert "adapter/adapter_model.safetensors" in paths and MANIFEST not in paths
    for entry in manifest["files"]:
        data = (run / entry["path"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert json.loads((run / MANIFEST).read_text()) == manifest
    assert verify_manifest(run) == []


def test_verify_manifest_names_changed_missing_and_extra_files(tmp_path) -> None:
    run = _old_dp_run(tmp_path)
    write_manifest(run)
    (run / "epsilon.png").write_bytes(b"\x89PNG new")
    (run / "privacy.jsonl").unlink()
    (run / "late.txt").write_text("x")
    assert verify_manifest(run) == ["privacy.jsonl: missing", "late.txt: not in the manifest",
                                    "epsilon.png: changed since the run wrote it"]


def test_without_a_summary_the_manifest_says_failed(tmp_path) -> None:
    (tmp_path / "flower.log").write_text("crash")
    assert write_manifest(tmp_path)["status"] == "failed"


def _metrics(run: Path, rounds: int) -> None:
    rows = [{"round": r, "accuracy": 0.5 + r / 100, "loss": 1.0, "wall_seconds": 10.0 * r}
            for r in range(rounds + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                       + '{"round": 9, "accur')  # cut by the interrupt


def test_interrupted_run_without_a_summary_gets_one_from_its_files(tmp_path) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    _metrics(tmp_path, 2)
    (tmp_path / "privacy.jsonl").write_text(
        '{"round": 1, "level": "sample", "node": 1, "epsilon": 1.5, "delta": 1e-5}\n'
        '{"round": 2, "level": "sample", "node": 2, "epsilon": 2.5, "delta": 1e-5}\n')
    summary = mark_interrupted(tmp_path, signal.SIGTERM)
    assert summary is not None
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["status"] == "interrupted" and summary["reason"] == "interrupted by SIGTERM"
    assert summary["last_completed_round"] == 2 == last_completed_round(tmp_path)
    assert summary["method"] == "lora" and summary["rounds"] == 5 and summary["seed"] == 3
    assert summary["final_accuracy"] == pytest.approx(0.52)
    assert summary["epsilon"] == 2.5 and summary["delta"] == 1e-5  # privacy spent is kept


def test_interrupt_wins_over_a_failure_caused_by_the_shutdown(tmp_path) -> None:
    _metrics(tmp_path, 1)
    (tmp_path / "summary.json").write_text(json.dumps({
        "method": "lora", "status": "failed", "trainable_params": 7,
        "reason": "ray.exceptions.ActorUnavailableError"}))
    summary = mark_interrupted(tmp_path, signal.SIGINT)
    assert summary is not None and summary["status"] == "interrupted"
    assert summary["reason"] == "interrupted by SIGINT" and summary["last_completed_round"] == 1
    assert summary["trainable_params"] == 7  # the ServerApp's facts are kept
    assert "ActorUnavailableError" in summary["shutdown_error"]


@pytest.mark.parametrize("status", ["completed", "stopped"])
def test_a_run_that_had_ended_keeps_its_summary(tmp_path, status) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"status": status}))
    assert mark_interrupted(tmp_path, signal.SIGINT) is None
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": status}


def test_nothing_completed_is_round_zero(tmp_path) -> None:
    assert last_completed_round(tmp_path) == 0
    assert mark_interrupted(tmp_path, signal.SIGINT)["last_completed_round"] == 0  # type: ignore[index]
