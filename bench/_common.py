"""Helpers shared by the benchmarks in ``bench/``.

Every benchmark script (``comm.py`` now; ``secagg``, ``he`` and ``dp`` later) does the
same three things around its measurements:

1. records the machine and library versions it ran on (:func:`machine_info`);
2. writes its results to ``bench/results/<name>.json`` (:func:`write_json`);
3. regenerates its own Markdown section of ``bench/README.md``, the text between
   ``<!-- <name>:start -->`` and ``<!-- <name>:end -->``, leaving every other section
   untouched (:func:`update_readme_section`).

Nothing here imports torch or Flower at module level, so importing it is cheap.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_DIR",
    "README_PATH",
    "RESULTS_DIR",
    "ROOT",
    "MarkerError",
    "footer",
    "machine_info",
    "markdown_table",
    "marker_names",
    "median_seconds",
    "publish",
    "replace_marker_section",
    "update_readme_section",
    "write_json",
]

#: ``bench/`` itself.
BENCH_DIR = Path(__file__).resolve().parent
#: The repository root.
ROOT = BENCH_DIR.parent
#: Where benchmarks write their JSON results.
RESULTS_DIR = BENCH_DIR / "results"
#: The README whose marker sections the benchmarks regenerate.
README_PATH = BENCH_DIR / "README.md"

#: Distributions whose versions every result file records (absent ones are skipped).
VERSIONED_PACKAGES = ("torch", "flwr", "numpy", "transformers", "peft", "securefed")


class MarkerError(ValueError):
    """A README's marker pair is malformed (one marker missing, repeated or reversed)."""


def marker_names(name: str) -> tuple[str, str]:
    """The start and end markers of section ``name``.

    Parameters
    ----------
    name : str
        Section name, e.g. ``"comm"``; letters, digits, ``-`` and ``_`` only.

    Returns
    -------
    tuple of str
        ``("<!-- name:start -->", "<!-- name:end -->")``.

    Raises
    ------
    ValueError
        If ``name`` is empty or holds other characters (they could forge another
        section's markers).
    """
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"invalid section name {name!r}: use letters, digits, '-', '_'")
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_marker_section(text: str, name: str, body: str) -> str:
    """Replace the text between section ``name``'s markers with ``body``.

    The markers themselves stay; ``body`` is placed on its own lines between them, so
    applying the same body twice gives the same document. A document without the
    markers gets a new section appended at its end (markers included), which is how a
    new benchmark adds itself to the README.

    Parameters
    ----------
    text : str
        The whole document.
    name : str
        Section name (see :func:`marker_names`).
    body : str
        The new content (Markdown); surrounding blank lines are normalised.

    Returns
    -------
    str
        The updated document.

    Raises
    ------
    MarkerError
        If only one of the two markers is present, either occurs more than once, or
        the end marker precedes the start marker.
    """
    start, end = marker_names(name)
    n_start, n_end = text.count(start), text.count(end)
    block = f"{start}\n{body.strip()}\n{end}"
    if n_start == 0 and n_end == 0:
        return f"{text.rstrip()}\n\n{block}\n" if text.strip() else f"{block}\n"
    if n_start != 1 or n_end != 1:
        raise MarkerError(
            f"section {name!r} needs exactly one {start!r} and one {end!r}; "
            f"found {n_start} and {n_end}"
        )
    i, j = text.index(start), text.index(end)
    if j < i:
        raise MarkerError(f"section {name!r}: {end!r} comes before {start!r}")
    return text[:i] + block + text[j + len(end) :]


def update_readme_section(name: str, body: str, readme: Path = README_PATH) -> None:
    """Rewrite section ``name`` of ``readme`` in place (see :func:`replace_marker_section`).

    Raises
    ------
    FileNotFoundError
        If ``readme`` does not exist (the intro is hand-written, never generated).
    MarkerError
        If the file's markers for ``name`` are malformed; the file is left unchanged.
    """
    text = readme.read_text(encoding="utf-8")
    new = replace_marker_section(text, name, body)
    if new != text:
        readme.write_text(new, encoding="utf-8")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Where and with what a benchmark ran.

    Returns
    -------
    dict
        ``date`` (UTC, ISO 8601), ``python``, ``platform``, ``machine``, ``processor``,
        ``cpu_count`` (logical CPUs), ``cpus_usable`` (this process's affinity, where
        the OS reports it), ``torch_threads`` (only if torch is already imported), and
        ``versions``: the installed version of each of :data:`VERSIONED_PACKAGES`.
    """
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = int(torch.get_num_threads())
    info["versions"] = {
        dist: v for dist in VERSIONED_PACKAGES if (v := _version(dist)) is not None
    }
    return info


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented, strict JSON (NaN/inf become ``null``), creating parents.

    Parameters
    ----------
    path : Path
        Destination file.
    data : mapping
        JSON-ready data (numbers, strings, booleans, lists, mappings).

    Returns
    -------
    Path
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(data), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """A GitHub Markdown table.

    Parameters
    ----------
    headers : sequence of str
        Column titles.
    rows : sequence of sequences
        Cell values, already formatted (``str()`` is applied); ``|`` is escaped.
    align : str, optional
        One character per column: ``l``, ``r`` or ``c``. Default: all left.

    Returns
    -------
    str
        The table, without a trailing newline.

    Raises
    ------
    ValueError
        If a row or ``align`` does not have one entry per column.
    """
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} entries for {len(headers)} columns")
    rules = {"l": ":---", "r": "---:", "c": ":---:"}

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(headers), "|" + "|".join(rules[a] for a in align) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells, expected {len(headers)}")
        out.append(line(row))
    return "\n".join(out)


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Call ``fn`` ``repeats`` times; return the median wall time and every sample.

    Raises
    ------
    ValueError
        If ``repeats`` < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples


def footer(machine: Mapping[str, Any]) -> str:
    """The italic provenance line under a benchmark table (date, versions, CPUs)."""
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    return (f"*{machine['date']}, Python {machine['python']}, {versions}, "
            f"{machine['cpu_count']} CPUs ({machine['platform']}).*")


def publish(section: str, report: Mapping[str, Any], markdown: str, out: Path,
            readme: Path | None) -> None:
    """Write ``report`` to ``out``, print ``markdown`` and put it in ``readme``'s section
    (``readme=None``: leave the README alone)."""
    write_json(out, report)
    print(markdown)
    if readme is not None:
        update_readme_section(section, markdown, readme)
