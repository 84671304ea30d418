"""A run directory holds exactly one run.

``securefed run`` writes everything a run produces under one folder. This module keeps
that folder honest:

* :func:`prepare_run_dir` refuses an existing non-empty folder, unless the caller asks
  to overwrite it, and then clears it first, so no file of an earlier run (an old
  ``privacy.jsonl``, an ``epsilon.png`` of a DP run) can stay behind. It only ever
  clears a folder that looks like a securefed run directory (:func:`is_run_dir`):
  ``--overwrite`` pointed at the repository or ``$HOME`` is refused.
* :func:`write_manifest` lists, at the end of every run (completed, failed, stopped or
  interrupted), every file under the folder with its size and SHA-256;
  :func:`verify_manifest` checks a folder against it.
* :func:`mark_interrupted` records a run stopped by SIGINT or SIGTERM in
  ``summary.json`` (``status = "interrupted"``, the last completed round).

Resuming a run in its folder is not implemented yet; ``prepare_run_dir(resume=True)``
is where it will go.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from securefed.exceptions import SecurefedError
from securefed.files import read_json_object, sha256_file, write_json_atomic

__all__ = ["MANIFEST", "PROGRESS", "RunDirError", "is_run_dir", "last_completed_round",
           "mark_interrupted", "prepare_run_dir", "securefed_version", "verify_manifest",
           "write_json_atomic", "write_manifest"]

#: The file listing every file of the run (written last).
MANIFEST = "manifest.json"
#: Progress inside the current round (written by the ServerApp as replies arrive).
PROGRESS = "progress.json"
#: Files only a securefed run writes next to its ``config.toml``.
_RUN_FILES = ("summary.json", "metrics.jsonl", "partitions.json", "flower.log", "superlink.pid",
              PROGRESS)
#: Statuses of a run that ended on its own; an interrupt does not replace them.
_ENDED = ("completed", "stopped")


class RunDirError(SecurefedError):
    """The run directory cannot be used (in use by another run, or not a run folder)."""


def securefed_version() -> str:
    """The installed securefed version (``"unknown"`` when not installed)."""
    try:
        return version("securefed")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "unknown"


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a folder a securefed run wrote.

    True if it holds a securefed ``manifest.json``, or a ``config.toml`` with the
    ``[experiment]`` and ``[federation]`` tables of a securefed config next to a file
    only a run writes (``summary.json``, ``metrics.jsonl``, ``partitions.json``,
    ``flower.log``, ``superlink.pid``, ``progress.json``). A repository checkout or a
    home folder (holding ``.git``) never is.
    """
    if (path / ".git").exists():
        return False
    manifest = read_json_object(path / MANIFEST)
    if manifest is not None and "securefed_version" in manifest:
        return True
    try:
        config = tomllib.loads((path / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return ({"experiment", "federation"} <= set(config)
            and any((path / name).is_file() for name in _RUN_FILES))


def _protected(path: Path) -> bool:
    """The file-system root, the home folder, the working directory, or one above it."""
    cwd = Path.cwd().resolve()
    return path == Path(path.anchor) or path == Path.home().resolve() or path in (
        cwd, *cwd.parents)


def prepare_run_dir(run_dir: Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Make ``run_dir`` ready for a new run; return its resolved path.

    A missing or empty folder is used as is. A non-empty one is refused, unless
    ``overwrite`` is set and it looks like a securefed run directory
    (:func:`is_run_dir`): then everything in it is deleted first.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    overwrite : bool
        Clear an existing run directory (``securefed run --overwrite``).
    resume : bool
        Continue the run in ``run_dir`` (not implemented yet; always refused).

    Raises
    ------
    RunDirError
        If the folder holds files and ``overwrite`` is not set, if it does not look
        like a run directory (``overwrite`` never clears an arbitrary folder), if it is
        a file, or if ``resume`` is asked for.
    """
    run_dir = run_dir.resolve()
    if resume:
        raise RunDirError(f"cannot resume the run in {run_dir}: resuming is not "
                          "implemented yet; use --overwrite to start it again")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(f"run directory {run_dir} is not empty (a previous run?); "
                              "pass --overwrite to replace it, or choose another --out")
        if _protected(run_dir) or not is_run_dir(run_dir):
            raise RunDirError(f"--overwrite refused: {run_dir} is not empty and does not "
                              "look like a securefed run directory (no manifest.json, or "
                              "config.toml with summary.json/metrics.jsonl); choose an empty "
                              "or new --out")
        for child in run_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


# ------------------------------------------------------------------ manifest
def _files(run_dir: Path) -> list[Path]:
    """Every regular file under ``run_dir`` but the manifest, sorted by relative path."""
    out = []
    for root, _, names in os.walk(run_dir):
        for name in names:
            path = Path(root) / name
            rel = path.relative_to(run_dir)
            if rel == Path(MANIFEST) or (name.startswith(f".{MANIFEST}.")
                                         and rel.parent == Path(".")):
                continue
            if path.is_file() and not path.is_symlink():
                out.append(path)
    return sorted(out, key=lambda p: p.relative_to(run_dir).as_posix())


def _status(run_dir: Path) -> str:
    summary = read_json_object(run_dir / "summary.json")
    status = summary.get("status") if summary else None
    return str(status) if status else "failed"


def write_manifest(run_dir: Path, status: str | None = None) -> dict[str, Any]:
    """Write ``manifest.json``: every file under ``run_dir`` with its size and SHA-256.

    Parameters
    ----------
    run_dir : Path
        The run directory, after every process of the run has stopped.
    status : str, optional
        The run's status; default ``summary.json``'s (``"failed"`` without one).

    Returns
    -------
    dict
        ``{"securefed_version", "status", "files": [{"path", "size", "sha256"}]}``;
        paths are relative, ``/``-separated and sorted; ``manifest.json`` itself is not
        listed.
    """
    files = [{"path": p.relative_to(run_dir).as_posix(), "size": p.stat().st_size,
              "sha256": sha256_file(p)} for p in _files(run_dir)]
    manifest = {"securefed_version": securefed_version(),
                "status": status or _status(run_dir), "files": files}
    write_json_atomic(run_dir / MANIFEST, manifest)
    return manifest


def verify_manifest(run_dir: Path) -> list[str]:
    """What differs between ``run_dir`` and its manifest (empty: they agree).

    Each item is one line: a listed file that is missing or whose size or hash
    differs, or a file that is present but not listed.
    """
    manifest = read_json_object(run_dir / MANIFEST)
    if manifest is None:
        return [f"{MANIFEST} is missing or unreadable"]
    listed = {f["path"]: f for f in manifest.get("files", [])}
    present = {p.relative_to(run_dir).as_posix(): p for p in _files(run_dir)}
    problems = [f"{rel}: missing" for rel in sorted(set(listed) - set(present))]
    problems += [f"{rel}: not in the manifest" for rel in sorted(set(present) - set(listed))]
    for rel in sorted(set(listed) & set(present)):
        path, entry = present[rel], listed[rel]
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel}: changed since the run wrote it")
    return problems


# -------------------------------------------------------------- interruption
def _rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by the interrupt
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def last_completed_round(run_dir: Path) -> int:
    """The last round ``metrics.jsonl`` records as complete (0: none yet)."""
    rounds = [int(r["round"]) for r in _rows(run_dir / "metrics.jsonl")
              if isinstance(r.get("round"), int)]
    return max(rounds, default=0)


def _facts_from_files(run_dir: Path) -> dict[str, Any]:
    """What ``summary.json`` can say from the files alone (no summary was written)."""
    facts: dict[str, Any] = {}
    try:
        config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    section = {k: config.get(k, {}) for k in ("experiment", "model", "data", "method",
                                             "federation")}
    facts.update(method=section["method"].get("name"), backbone=section["model"].get("backbone"),
                 dataset=section["data"].get("dataset"),
                 num_clients=section["data"].get("num_clients"),
                 clients_per_round=section["federation"].get("clients_per_round"),
                 rounds=section["federation"].get("rounds"),
                 seed=section["experiment"].get("seed"))
    rows = _rows(run_dir / "metrics.jsonl")
    facts.update(final_accuracy=rows[-1].get("accuracy") if rows else None,
                 accuracy_per_round=[r.get("accuracy") for r in rows],
                 loss_per_round=[r.get("loss") for r in rows],
                 wall_seconds=rows[-1].get("wall_seconds") if rows else None)
    ledger = _rows(run_dir / "privacy.jsonl")  # the privacy spent so far is never dropped
    sample = [float(r["epsilon"]) for r in ledger
              if r.get("level") == "sample" and r.get("epsilon") is not None]
    user = [r for r in ledger if r.get("level") == "user"]
    facts.update(epsilon=max(sample) if sample else None,
                 user_level_epsilon=user[-1].get("user_epsilon") if user else None,
                 user_level_delta=user[-1].get("user_delta") if user else None)
    deltas = [r.get("delta") for r in ledger if r.get("level") == "sample" and r.get("delta")]
    facts["delta"] = deltas[-1] if deltas else facts["user_level_delta"]
    return facts


def mark_interrupted(run_dir: Path, signum: int) -> dict[str, Any] | None:
    """Record in ``summary.json`` that the run was stopped by ``signum``.

    Call it after every process of the run has stopped. A run that had already ended
    on its own (``completed``, ``stopped``) keeps its summary. Otherwise the summary
    gets ``status = "interrupted"``, ``reason = "interrupted by SIGINT"`` (or
    ``SIGTERM``) and ``last_completed_round`` from ``metrics.jsonl``; the facts of a
    summary the ServerApp wrote on its way down are kept (a ``"failed"`` one, caused by
    the shutdown, keeps its reason as ``shutdown_error``), and without one they are
    read from ``config.toml``, ``metrics.jsonl`` and ``privacy.jsonl``.

    Returns
    -------
    dict or None
        The summary written, or None if the run had ended and nothing was changed.
    """
    from securefed.report.recorder import SUMMARY_KEYS

    path = run_dir / "summary.json"
    old = read_json_object(path)
    if old is not None and old.get("status") in _ENDED:
        return None
    summary = dict(old) if old is not None else _facts_from_files(run_dir)
    if old is not None and old.get("status") == "failed" and old.get("reason"):
        summary["shutdown_error"] = old["reason"]
    name = signal.Signals(signum).name
    summary.update(status="interrupted", reason=f"interrupted by {name}",
                   last_completed_round=last_completed_round(run_dir))
    ordered = {k: summary.get(k) for k in SUMMARY_KEYS}
    ordered.update({k: v for k, v in summary.items() if k not in ordered})
    write_json_atomic(path, ordered)
    return ordered
