"""SecAgg+ cost: in-process protocol rounds for growing n, and mask-generation throughput.

(a) **Protocol cost.** One :func:`securefed.secagg.run_protocol` round (no dropouts,
every client and the server in this one process, sequentially) for n = 10, 100 and 500
clients, each with a LoRA payload of MiniLM-L6 (75,653 floats, the ``lora`` row of
``bench/comm.py``), inputs uniform in the clipping range ``[-1, 1]``. Degree,
threshold and bits are those :func:`securefed.secagg.plan.plan` chooses for each of
``--dropout-rates`` (default 0 and 0.1, failure target 1e-6: one series each); the
round itself drops nobody.
Reported: wall time of the round (median of ``--repeats``, fewer for large n), time
per client (wall / n: client and server work together), bytes each client uploads per
stage (checked against the plan), and the growth per 10x n,
``(y(n2) / y(n1)) ** (1 / log10(n2 / n1))``.

Every row runs in each of ``--adversaries`` (default both): ``semi-honest``, and
``malicious`` (Ed25519-signed keys bound to run, round, id and roster name, the members
map, the consistency round; :mod:`securefed.secagg.auth`), side by side in one run, with
the ratio malicious ÷ semi-honest of time and bytes per client (goal ≤ 1.05x bytes).

(b) **Mask throughput.** :func:`securefed.secagg.masks.expand_mask` for 1M elements
(8 MB of keystream) against the raw ChaCha20 keystream of ``cryptography`` written
in place into a buffer of the same 8 MB, interleaved in one run; goal >= 50 %.

Results go to ``bench/results/secagg.json`` and the ``secagg`` section of
``bench/README.md``::

    .venv/bin/python bench/secagg.py [--clients 10 100 500] [--params 75653]
                                     [--dropout-rates 0 0.1] [--no-readme]
                                     [--adversaries semi-honest malicious]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from bench import _common
from securefed.roster import Identity, Roster
from securefed.secagg import MASK_NONCE, Authenticator, expand_mask, make_config, run_protocol
from securefed.secagg.messages import SIGNATURE_BYTES
from securefed.secagg.plan import plan

SECTION = "secagg"  #: the README section this benchmark owns
LORA_PARAMS = 75_653  #: `lora` on minilm-l6, 5-label head (bench/comm.py)
GOAL_MASK_SHARE = 0.5  #: expand_mask reaches at least this share of raw ChaCha20
MASK_ELEMENTS = 1_000_000
GOAL_MALICIOUS_BYTES = 1.05  #: malicious ÷ semi-honest bytes per client, at most
ADVERSARIES = ("semi-honest", "malicious")


def authenticators(n: int, run: str = "bench") -> dict[int, Authenticator]:
    """Fresh in-memory identities ``member-1..n`` and their roster (malicious mode)."""
    people = {i: Identity(f"member-{i}", Ed25519PrivateKey.generate()) for i in range(1, n + 1)}
    roster = Roster({p.name: p.public_bytes for p in people.values()})
    return {i: Authenticator(p, roster, run) for i, p in people.items()}


def _growth(n1: int, y1: float, n2: int, y2: float) -> float | None:
    """Growth factor per 10x n between two points (``None`` if undefined)."""
    if y1 <= 0 or n2 == n1:
        return None
    return float((y2 / y1) ** (1.0 / math.log10(n2 / n1)))


def protocol_row(n: int, params: int, dropout_rate: float, repeats: int,
                 seed: int = 0, adversary: str = "semi-honest") -> dict[str, Any]:
    """Time ``repeats`` honest rounds of ``n`` clients and check bytes against the plan
    (malicious mode: the plan plus each client's name, two signatures and an id)."""
    p = plan(n, params, dropout_rate)
    cfg = make_config(n, params, p.clipping_range, p.bits, degree=p.degree,
                      threshold=p.threshold)
    rng = np.random.default_rng(seed)
    inputs = {i: {"w": rng.uniform(-1.0, 1.0, params)} for i in range(1, n + 1)}
    truth = np.sum([inputs[i]["w"] for i in inputs], axis=0)
    samples: list[float] = []
    bytes_per_client: dict[str, float] = {}
    max_err = 0.0
    auths = authenticators(n) if adversary == "malicious" else None
    extra = 0.0 if auths is None else statistics.fmean(
        len(a.name.encode()) + 2 * SIGNATURE_BYTES + 8 for a in auths.values())
    for r in range(repeats):
        t0 = time.perf_counter()
        res = run_protocol(inputs, config=cfg, rng=np.random.default_rng(seed + r),
                           auths=auths)
        samples.append(time.perf_counter() - t0)
        max_err = max(max_err, float(np.max(np.abs(res.aggregate["w"] - truth))))
        bytes_per_client = {s: statistics.fmean(v.values())
                            for s, v in res.bytes_per_client.items()}
    wall = statistics.median(samples)
    per_client_bytes = sum(bytes_per_client.values())
    return {
        "adversary": adversary,
        "dropout_rate": dropout_rate, "clients": n, "params": params, "degree": p.degree,
        "threshold": p.threshold,
        "bits": p.bits, "failure_bound": p.failure_probability,
        "repeats": repeats, "wall_seconds": wall, "wall_samples": samples,
        "seconds_per_client": wall / n, "stage_bytes_per_client": bytes_per_client,
        "bytes_per_client": per_client_bytes,
        "plan_bytes_per_client": p.bytes_per_client + extra,
        "bytes_match_plan": bool(math.isclose(per_client_bytes, p.bytes_per_client + extra)),
        "float32_bytes": 4 * params, "max_abs_error": max_err,
        "error_bound": n * p.step,
    }


def mask_throughput(elements: int, repeats: int) -> dict[str, Any]:
    """Median seconds of expand_mask (bits 32 and 64) and raw ChaCha20, interleaved."""
    seed = os.urandom(32)
    buf = bytearray(elements * 8)
    view = memoryview(buf)
    times: dict[str, list[float]] = {"raw_chacha20": [], "expand_mask_b32": [],
                                     "expand_mask_b64": []}

    def raw() -> None:
        enc = Cipher(algorithms.ChaCha20(seed, MASK_NONCE), mode=None).encryptor()
        enc.update_into(view, view)

    fns = {"raw_chacha20": raw,
           "expand_mask_b32": lambda: expand_mask(seed, elements, 32),
           "expand_mask_b64": lambda: expand_mask(seed, elements, 64)}
    for fn in fns.values():  # warm up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    nbytes = elements * 8
    return {
        "elements": elements, "keystream_bytes": nbytes, "repeats": repeats,
        "seconds": med, "samples": times,
        "mb_per_second": {k: nbytes / v / 1e6 for k, v in med.items()},
        "share_of_raw": {k: med["raw_chacha20"] / v for k, v in med.items()
                         if k != "raw_chacha20"},
    }


def render_markdown(report: Mapping[str, Any]) -> str:
    """The ``secagg`` section of ``bench/README.md`` from a :func:`main` report."""
    m, cfg, rows = report["machine"], report["config"], report["protocol"]
    table = _common.markdown_table(
        ["adversary", "plan for dropout", "clients n", "params", "k", "t", "bits", "round wall (s)",
         "time / client (ms)",
         "bytes / client", "of float32", "bytes = plan", "max sum error (bound)"],
        [[r.get("adversary", "semi-honest"), r["dropout_rate"], r["clients"],
          f"{r['params']:,}", r["degree"], r["threshold"],
          r["bits"],
          f"{r['wall_seconds']:.3f}", f"{1e3 * r['seconds_per_client']:.2f}",
          f"{r['bytes_per_client']:,.0f}", f"{r['bytes_per_client'] / r['float32_bytes']:.3f}x",
          "yes" if r["bytes_match_plan"] else "**NO**",
          f"{r['max_abs_error']:.2e} ({r['error_bound']:.1e})"] for r in rows],
        "lrrrrrrrrrrlr")
    growth = _common.markdown_table(
        ["adversary", "plan for dropout", "n from → to", "k", "round wall per 10x n",
         "time / client per 10x n", "bytes / client per 10x n"],
        [[g.get("adversary", "semi-honest"), g["dropout_rate"], f"{g['from']} → {g['to']}",
          g["degrees"], f"{g['wall']:.2f}x", f"{g['per_client_time']:.2f}x",
          f"{g['per_client_bytes']:.3f}x"] for g in report["growth"]], "lrlrrrr")
    compare = _common.markdown_table(
        ["plan for dropout", "clients n", "time ÷ semi-honest", "bytes ÷ semi-honest",
         f"≤ {GOAL_MALICIOUS_BYTES}x"],
        [[c["dropout_rate"], c["clients"], f"{c['time_ratio']:.3f}x",
          f"{c['bytes_ratio']:.4f}x",
          "pass" if c["bytes_ratio"] <= GOAL_MALICIOUS_BYTES else "**FAIL**"]
         for c in report.get("malicious_vs_semi_honest", [])], "rrrrl")
    mt = report["masks"]
    masks = _common.markdown_table(
        ["generator", "median (ms)", "MB/s", "share of raw ChaCha20"],
        [[name, f"{1e3 * mt['seconds'][name]:.2f}", f"{mt['mb_per_second'][name]:,.0f}",
          "–" if name == "raw_chacha20" else f"{100 * mt['share_of_raw'][name]:.1f} %"]
         for name in mt["seconds"]], "lrrr")
    share = min(mt["share_of_raw"].values())
    goal = "pass" if share >= GOAL_MASK_SHARE else "**FAIL**"
    lines = [
        "### Secure aggregation (`bench/secagg.py`)", "",
        f"**Protocol cost.** One in-process `run_protocol` round per row: n clients, each "
        f"with {cfg['params']:,} floats (a LoRA adapter of MiniLM-L6), no dropouts "
        "happen; k, t and bits are those `securefed secagg plan` chooses for the dropout "
        "rate in the first column (0: the default k = O(log n); 0.1: k raised until the "
        "recovery-failure bound is ≤ 1e-6, or the complete graph for n = 10). The "
        "masked vector costs ⌈bits/8⌉ bytes per value, so `plan` rounds the minimum "
        "bits up to whole bytes (a finer grid for free): 24 bits up to n = 256, 32 "
        "above (n = 500 needs 25 for the 2¹⁶ − 1 grid). All clients and "
        "the server run sequentially in one process, so *time / client* = wall ÷ n covers "
        "client and server work together. *bytes / client* is what each client uploads "
        "over the four stages, five in malicious mode (wire sizes of the messages); "
        "*bytes = plan*: equal to "
        "`plan()`'s prediction. Wall time is the median of "
        f"{'/'.join(str(r['repeats']) for r in rows[:len(cfg['clients'])])} runs.", "",
        table, "",
        "Growth per 10x n, `(y(n₂)/y(n₁))^(1/log₁₀(n₂/n₁))` (1.00x = constant per client; "
        "SecAgg+ predicts O(log n) per client, Bonawitz et al. O(n)):", "",
        growth, "",
        "Malicious-server mode against semi-honest, same n, k, t and bits, same run "
        "(signatures: Ed25519 sign once per client and stage, verify per neighbour and "
        "per consistency signature):", "",
        compare, "",
        f"**Mask generation.** `expand_mask` for {mt['elements']:,} elements "
        f"({mt['keystream_bytes'] / 1e6:.0f} MB of keystream) against the raw ChaCha20 "
        "keystream of `cryptography` written in place into a buffer of the same size, "
        f"interleaved in one run, median of {mt['repeats']}. Goal ≥ "
        f"{100 * GOAL_MASK_SHARE:.0f} % of raw: **{goal}** ({100 * share:.1f} %).", "",
        masks, "",
    ]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines.append(f"*{m['date']}, Python {m['python']}, {versions}, {m['cpu_count']} CPUs "
                 f"({m['platform']}).*")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, write JSON and the README section. Returns 0, or 1 if a round's bytes
    differ from the plan (a failed throughput goal is reported, not an error)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--params", type=int, default=LORA_PARAMS)
    parser.add_argument("--dropout-rates", type=float, nargs="+", default=[0.0, 0.1],
                        help="one series per rate: k, t as plan() chooses for it")
    parser.add_argument("--repeats", type=int, default=5, help="repeats for n <= 10")
    parser.add_argument("--adversaries", nargs="+", default=list(ADVERSARIES),
                        choices=ADVERSARIES, help="run every row in each mode")
    parser.add_argument("--mask-repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR / "secagg.json")
    parser.add_argument("--readme", type=Path, default=_common.README_PATH)
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    growth: list[dict[str, Any]] = []
    for rate, adversary in itertools.product(args.dropout_rates, args.adversaries):
        series = []
        for n in sorted(args.clients):
            repeats = args.repeats if n <= 10 else (3 if n <= 100 else 1)
            print(f"protocol: n={n}, {args.params:,} params, k for dropout {rate}, "
                  f"{adversary}, {repeats} run(s)", file=sys.stderr)
            series.append(protocol_row(n, args.params, rate, repeats, adversary=adversary))
        rows += series
        growth += [
            {"adversary": adversary, "dropout_rate": rate, "from": a["clients"],
             "to": b["clients"],
             "degrees": f"{a['degree']} → {b['degree']}",
             "wall": _growth(a["clients"], a["wall_seconds"], b["clients"],
                             b["wall_seconds"]),
             "per_client_time": _growth(a["clients"], a["seconds_per_client"], b["clients"],
                                        b["seconds_per_client"]),
             "per_client_bytes": _growth(a["clients"], a["bytes_per_client"], b["clients"],
                                         b["bytes_per_client"])}
            for a, b in itertools.pairwise(series)
        ]
    by = {(r["adversary"], r["dropout_rate"], r["clients"]): r for r in rows}
    compare = [
        {"dropout_rate": rate, "clients": n,
         "time_ratio": m["wall_seconds"] / by[("semi-honest", rate, n)]["wall_seconds"],
         "bytes_ratio": m["bytes_per_client"]
         / by[("semi-honest", rate, n)]["bytes_per_client"]}
        for (adv, rate, n), m in by.items()
        if adv == "malicious" and ("semi-honest", rate, n) in by]
    print(f"masks: {MASK_ELEMENTS:,} elements x {args.mask_repeats}", file=sys.stderr)
    masks = mask_throughput(MASK_ELEMENTS, args.mask_repeats)
    report: dict[str, Any] = {
        "benchmark": SECTION, "machine": _common.machine_info(),
        "config": {"params": args.params, "dropout_rates": args.dropout_rates,
                   "clients": sorted(args.clients), "clipping_range": 1.0},
        "protocol": rows, "growth": growth, "masks": masks,
        "malicious_vs_semi_honest": compare,
        "goals": [{"metric": "mask_share_of_raw_chacha20", "threshold": GOAL_MASK_SHARE,
                   "value": min(masks["share_of_raw"].values()),
                   "passed": min(masks["share_of_raw"].values()) >= GOAL_MASK_SHARE},
                  *[{"metric": f"malicious_bytes_ratio_n{c['clients']}_p{c['dropout_rate']}",
                     "threshold": GOAL_MALICIOUS_BYTES, "value": c["bytes_ratio"],
                     "passed": c["bytes_ratio"] <= GOAL_MALICIOUS_BYTES} for c in compare]],
    }
    _common.write_json(args.out, report)
    markdown = render_markdown(report)
    if not args.no_readme:
        _common.update_readme_section(SECTION, markdown, args.readme)
    print(markdown)
    if not all(r["bytes_match_plan"] for r in rows):
        print("error: a round's bytes per client differ from plan()", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
