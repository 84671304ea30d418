"""Communication cost of every tuning method: the bytes a client sends each round.

For every registered tuning method on one backbone (default ``minilm-l6``, 5-label
head, default method parameters, seed 0) this takes ``method.payload(model)`` and
measures its trainable parameters, tensors, raw bytes and *wire bytes*: Flower's
serialised form of the payload in the wire format of :mod:`strategies.records` (one
flat Array per dtype plus a JSON layout, :func:`~strategies.records.wire_nbytes`), the
number the server records as ``bytes_up_per_client`` and ``bytes_down_per_client``.
Flower sends each distinct object once, so identical 5 MiB chunks would travel once;
:func:`wire_bytes` checks that the size does not depend on the values (it equals that
of random tensors of the same layout). It also reports ``overhead = (wire - raw) / raw``,
where that overhead comes from, ``share_of_full`` and the serialise + deserialise round
trip as the in-process grid applies it (median of ``--repeats``).

One real ``lora`` round through the in-process grid then cross-checks the server's byte
counts; a mismatch exits with status 1. Results go to ``bench/results/comm.json`` and
the ``comm`` section of ``bench/README.md``::

    .venv/bin/python bench/comm.py [--backbone minilm-l6] [--out bench/results/comm.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from flwr.app import RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from bench import _common
from securefed.methods import METHODS, create_method
from securefed.models import Backbone, build_classifier, resolve_backbone
from strategies.records import pack_payload, raw_nbytes, read_payload, wire_nbytes, write_payload

LORA_FAMILY = ("lora", "ffa-lora", "federa")  #: methods the goals apply to
GOAL_MAX_SHARE_OF_FULL = 0.005  #: a LoRA-family payload is at most this share of full's
GOAL_MAX_OVERHEAD = 0.02  #: serialisation adds at most this to a LoRA-family payload
SECTION = "comm"  #: the README section this benchmark owns


@dataclass(frozen=True)
class MethodComm:
    """Communication cost of one method. ``overhead = (wire_bytes - raw_bytes) /
    raw_bytes`` splits into ``layout_json_bytes`` (the JSON of ``[key, dtype, shape]``),
    ``npy_header_bytes`` (one ``.npy`` header per dtype array) and ``object_bytes``
    (Flower's record, array and chunk object headers: content ids, metadata, framing)."""

    method: str
    params: dict[str, Any]
    trainable_params: int
    num_tensors: int
    num_arrays: int
    raw_bytes: int
    wire_bytes: int
    overhead: float
    layout_json_bytes: int
    npy_header_bytes: int
    object_bytes: int
    roundtrip_seconds: float
    roundtrip_samples: list[float]
    share_of_full: float | None = None


def random_like(payload: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Same keys, shapes and dtypes as ``payload``, random values (a trained reply)."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(np.shape(v)).astype(np.asarray(v).dtype)
            for k, v in payload.items()}


def wire_bytes(payload: Mapping[str, np.ndarray]) -> int:
    """``wire_nbytes(payload)``, checked to equal that of random tensors of the same layout.

    Raises
    ------
    AssertionError
        If the size depends on the values (bit-identical chunks deduplicated), so that
        one number cannot stand for every round.
    """
    wire = wire_nbytes(payload)
    if wire_nbytes(random_like(payload)) != wire:
        raise AssertionError("wire size depends on the tensor values (identical chunks)")
    return wire


def roundtrip(payload: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``write_payload`` → ``RecordDict`` → deflate every object → inflate →
    ``read_payload``: the content half of :func:`securefed.app.grid.transport`."""
    content = RecordDict()
    content.update(write_payload(payload))
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    inflated = inflate_object_from_contents(content.object_id, contents)
    if not isinstance(inflated, RecordDict):
        raise TypeError(f"inflated a {type(inflated).__name__}, expected RecordDict")
    return read_payload(inflated)


def check_roundtrip(payload: Mapping[str, np.ndarray]) -> None:
    """Raise AssertionError unless :func:`roundtrip` returns ``payload`` bit for bit."""
    back = roundtrip(payload)
    if list(back) != list(payload):
        raise AssertionError("round trip changed the keys or their order")
    for key, value in payload.items():
        b = back[key]
        if b.dtype != value.dtype or b.shape != value.shape or b.tobytes() != value.tobytes():
            raise AssertionError(f"round trip changed tensor {key!r}")


def measure_method(name: str, backbone: Backbone, *, num_labels: int = 5, seed: int = 0,
                   repeats: int = 5) -> MethodComm:
    """Build ``backbone`` + seeded head + method ``name`` (defaults) and measure it.

    Raises
    ------
    AssertionError
        If the payload disagrees with the method's own size accounting, its wire size
        depends on values, or the round trip is not bit-exact.
    """
    method = create_method(name)
    model = method.apply(build_classifier(backbone, num_labels, seed=seed),
                         backbone.architecture, seed=seed)
    payload = method.payload(model)
    trainable, raw = int(sum(v.size for v in payload.values())), raw_nbytes(payload)
    if trainable != method.trainable_parameters(model) or raw != method.payload_nbytes(model):
        raise AssertionError(f"{name}: payload disagrees with the method's size accounting")
    wire = wire_bytes(payload)
    arrays, layout = pack_payload(payload)
    layout_json = len(str(layout["layout"]).encode())
    npy = sum(len(a.data) - np.dtype(a.dtype).itemsize * math.prod(a.shape)
              for a in arrays.values())
    check_roundtrip(payload)
    median, samples = _common.median_seconds(lambda: roundtrip(payload), repeats)
    return MethodComm(
        method=name, params=method.params(), trainable_params=trainable,
        num_tensors=len(payload), num_arrays=len(arrays), raw_bytes=raw, wire_bytes=wire,
        overhead=(wire - raw) / raw, layout_json_bytes=layout_json, npy_header_bytes=npy,
        object_bytes=wire - raw - layout_json - npy, roundtrip_seconds=median,
        roundtrip_samples=samples,
    )


def measure_all(backbone: Backbone, *, methods: Sequence[str] | None = None,
                num_labels: int = 5, seed: int = 0, repeats: int = 5) -> list[MethodComm]:
    """:func:`measure_method` per method (default all), ``share_of_full`` filled in
    when ``full`` is among them."""
    rows = []
    for name in methods or METHODS.names():
        t0 = time.perf_counter()
        rows.append(measure_method(name, backbone, num_labels=num_labels, seed=seed,
                                   repeats=repeats))
        print(f"  {name:<9} {rows[-1].wire_bytes:>12,} B  ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr)
    full = next((r.wire_bytes for r in rows if r.method == "full"), None)
    if full:
        rows = [dataclasses.replace(r, share_of_full=r.wire_bytes / full) for r in rows]
    return rows


def lora_round_config(backbone_name: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The smallest real experiment: 2 clients, 1 round of ``lora`` (defaults), no eval."""
    return {
        "experiment": {"name": "bench-comm", "seed": seed, "out_dir": "unused"},
        "model": {"backbone": backbone_name, "max_length": 32},
        "data": {"dataset": "bbc-news", "max_train": 60, "max_test": 20,
                 "partitioner": "iid", "num_clients": 2},
        "method": {"name": "lora"},
        "federation": {"rounds": 1, "clients_per_round": 2, "evaluate_clients": 0,
                       "central_eval": False},
        "train": {"local_epochs": 1, "batch_size": 8, "max_steps": 2},
    }


def lora_round_check(backbone_name: str, measured: MethodComm, workdir: Path, *,
                     seed: int = 0) -> dict[str, Any]:
    """One real ``lora`` round in-process; compare the server's recorded byte counts
    with ``wire_nbytes`` of the run's own initial payload (down) and of random tensors
    of its layout (up), and both with ``measured.wire_bytes`` (the benchmark's row)."""
    from securefed.app.launcher import run_inprocess
    from securefed.app.runtime import tuned_model
    from securefed.config import ExperimentConfig
    from securefed.report.recorder import read_metrics

    tree = lora_round_config(backbone_name, seed)
    config = ExperimentConfig.from_dict(tree)
    initial = tuned_model(config).payload()  # copies, taken before the round trains
    flwr_log = logging.getLogger("flwr")
    level, t0 = flwr_log.level, time.perf_counter()
    flwr_log.setLevel(logging.WARNING)
    try:
        summary = run_inprocess(config, workdir / "run")
    finally:
        flwr_log.setLevel(level)
    row = next(r for r in read_metrics(workdir / "run" / "metrics.jsonl") if r["round"] == 1)
    up, down = row["bytes_up_per_client"], row["bytes_down_per_client"]
    expected_up, expected_down = wire_nbytes(random_like(initial)), wire_nbytes(initial)
    return {
        "config": tree, "status": summary.get("status"), "clients": len(row["clients"]),
        "rejected_replies": row.get("rejected_replies"),
        "bytes_up_per_client": up, "bytes_down_per_client": down,
        "expected_bytes_up": expected_up, "expected_bytes_down": expected_down,
        "up_matches": up == expected_up, "down_matches": down == expected_down,
        "benchmark_matches": up == down == measured.wire_bytes,
        "raw_matches": summary.get("payload_raw_bytes") == measured.raw_bytes,
        "seconds": time.perf_counter() - t0,
    }


def round_ok(check: Mapping[str, Any]) -> bool:
    """Whether every comparison of :func:`lora_round_check` held."""
    keys = ("up_matches", "down_matches", "benchmark_matches", "raw_matches")
    return check["status"] == "completed" and all(check[k] for k in keys)


def evaluate_goals(rows: Sequence[MethodComm]) -> list[dict[str, Any]]:
    """Per LoRA-family row: ``share_of_full <= GOAL_MAX_SHARE_OF_FULL`` (fails without
    ``full``) and ``overhead <= GOAL_MAX_OVERHEAD``, with measured value and pass/fail."""
    goals: list[dict[str, Any]] = []
    for r in (r for r in rows if r.method in LORA_FAMILY):
        share = r.share_of_full
        goals += [
            {"method": r.method, "metric": "share_of_full", "value": share,
             "threshold": GOAL_MAX_SHARE_OF_FULL,
             "passed": share is not None and share <= GOAL_MAX_SHARE_OF_FULL},
            {"method": r.method, "metric": "overhead", "value": r.overhead,
             "threshold": GOAL_MAX_OVERHEAD, "passed": r.overhead <= GOAL_MAX_OVERHEAD},
        ]
    return goals


def overhead_note(row: Mapping[str, Any]) -> str:
    """One sentence: where ``row``'s serialisation overhead comes from."""
    npy = "one `.npy` header" if row["num_arrays"] == 1 else f"{row['num_arrays']} `.npy` headers"
    return (f"`{row['method']}`'s {row['wire_bytes'] - row['raw_bytes']:,} B of overhead are "
            f"the layout JSON ({row['num_tensors']} key names with dtype and shape) "
            f"{row['layout_json_bytes']:,} B, {npy} {row['npy_header_bytes']:,} B, and "
            f"Flower's record, array and chunk object headers (content ids, metadata) "
            f"{row['object_bytes']:,} B.")


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The ``comm`` section of ``bench/README.md`` from a :func:`main` report."""
    m, cfg = report["machine"], report["config"]
    table = _common.markdown_table(
        ["method", "trainable params", "tensors", "raw bytes", "wire bytes", "overhead",
         "of full", "round trip (ms)"],
        [[r["method"], f"{r['trainable_params']:,}", r["num_tensors"], f"{r['raw_bytes']:,}",
          f"{r['wire_bytes']:,}", _pct(r["overhead"]), _pct(r["share_of_full"], 3),
          f"{1e3 * r['roundtrip_seconds']:.{3 if r['roundtrip_seconds'] < 0.01 else 1}f}"]
         for r in report["rows"]], "lrrrrrrr")
    goals = _common.markdown_table(
        ["method", "goal", "measured", "result"],
        [[g["method"], f"{g['metric'].replace('_', ' ')} ≤ {_pct(g['threshold'], 1)}",
          _pct(g["value"], 3), "pass" if g["passed"] else "**FAIL**"]
         for g in report["goals"]], "llrl")
    lines = [
        "### Communication per round (`bench/comm.py`)", "",
        f"Backbone `{cfg['backbone']}`, {cfg['num_labels']}-label head, default method "
        f"parameters, seed {cfg['seed']}. *wire bytes* is Flower's serialised payload in "
        "the wire format (one flat array per dtype + JSON layout): what the server records "
        "as `bytes_up_per_client` and `bytes_down_per_client`; it does not depend on the "
        "tensor values (checked against random tensors of the same layout). *overhead* = "
        "(wire − raw) / raw; *of full* = wire ÷ `full`'s; *round trip* = serialise + "
        f"deserialise as the in-process grid does, median of {cfg['repeats']}.",
        "", table, "", goals, "",
    ]
    check = report.get("lora_round")
    if check:
        lines += [
            f"Real round (`lora`, in-process grid, {check['clients']} clients): the server "
            f"recorded `bytes_up_per_client` = {check['bytes_up_per_client']:,.0f} (expected "
            f"{check['expected_bytes_up']:,}) and `bytes_down_per_client` = "
            f"{check['bytes_down_per_client']:,} (expected {check['expected_bytes_down']:,}):"
            f" {'match' if round_ok(check) else '**MISMATCH**'}.", ""]
    if report.get("overhead_note"):
        lines += [report["overhead_note"], ""]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines.append(f"*{m['date']}, Python {m['python']}, {versions}, {m['cpu_count']} CPUs "
                 f"({m['platform']}).*")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, cross-check with a real round, write JSON and README. Returns 0, or 1
    if the real round's byte counts disagree (failed goals are reported, not errors)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm-l6", help="backbone alias or folder")
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR / "comm.json")
    parser.add_argument("--readme", type=Path, default=_common.README_PATH)
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    parser.add_argument("--repeats", type=int, default=5, help="round-trip timing repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-labels", type=int, default=5)
    parser.add_argument("--skip-round", action="store_true", help="no real lora round")
    args = parser.parse_args(argv)

    print(f"measuring {len(METHODS.names())} methods on {args.backbone}", file=sys.stderr)
    rows = measure_all(resolve_backbone(args.backbone), num_labels=args.num_labels,
                       seed=args.seed, repeats=args.repeats)
    lora = next((r for r in rows if r.method == "lora"), None)
    check = None
    if lora is not None and not args.skip_round:
        print("running one real lora round through the in-process grid", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="bench-comm-") as tmp:
            check = lora_round_check(args.backbone, lora, Path(tmp), seed=args.seed)
    json_rows = [dataclasses.asdict(r) for r in rows]
    report: dict[str, Any] = {
        "benchmark": "comm", "machine": _common.machine_info(),
        "config": {"backbone": args.backbone, "num_labels": args.num_labels,
                   "seed": args.seed, "repeats": args.repeats,
                   "flwr_max_array_chunk_size": FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE},
        "rows": json_rows, "goals": evaluate_goals(rows), "lora_round": check,
        "overhead_note": next((overhead_note(r) for r in json_rows if r["method"] == "lora"),
                              None),
    }
    _common.write_json(args.out, report)
    markdown = render_markdown(report)
    if not args.no_readme:
        _common.update_readme_section(SECTION, markdown, args.readme)
    print(markdown)
    if check is not None and not round_ok(check):
        print("error: the real round's byte counts differ from the measurement",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
