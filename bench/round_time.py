"""Round time of (secure) aggregation through Flower's simulation engine.

The payload is the trainable tensors of LoRA (r=8, alpha=16) on MiniLM-L6 with a
5-label head (BBC News), exactly what ``bench/comm.py`` measures for ``lora``. Client
``i`` returns the global payload it received plus a fixed perturbation ``delta_i``
(uniform in ``±scale``, seeded by ``(seed, i)``) with weight ``100 + i``. By default
clients do not train, so a round is protocol + aggregation + transport
(mode ``protocol-only``); with ``--train-steps K`` every client of every variant first
runs ``K`` real LoRA steps (:mod:`bench._local_training`; batch 16, sequence 64, random
token ids) and throws the result away, so the round costs what a real FL round does
while the aggregate stays checkable (mode ``train-K-steps``). Every variant runs in
its own ``flwr.simulation.run_simulation`` (Ray backend, one CPU per client) for
``--rounds`` rounds; its ``ServerApp`` times each round itself (startup excluded),
checks the new global against the weighted mean of the client payloads and writes
both to a JSON file. Round 1 is reported as warm-up, the median of the others as the
round time, and every variant's ratios to ``flower-plaintext`` and
``securefed-plaintext`` of the same run (:data:`BASELINES`).

Variants live in :data:`VARIANTS`; built in (legacy API, :mod:`bench._flower_legacy`):
``flower-plaintext``, ``flower-secagg+`` (3 shares, threshold 2) and
``flower-secagg+plan`` (shares and threshold from ``securefed.secagg.plan``); Message
API (:mod:`bench._securefed_variants`): ``securefed-plaintext`` (``AdapterFedAvg``) and
``securefed-secagg`` (``SecureAggregation`` + ``secagg_mod``). **Adding a variant**::

    from bench.round_time import RoundSetup, register_variant

    @register_variant("securefed-secagg")
    def securefed_secagg(setup: RoundSetup) -> tuple[ServerApp, ClientApp]:
        ...  # server: timer = setup.timer(); per round r: timer.start(r) ...
        ...  # timer.stop(r); timer.check(r, new_arrays, setup.expected(old_arrays))
        ...  # end of run: timer.write({"tolerance": ..., ...}); client: setup.client

and import that module in :func:`_load_variants` (the ``HOOK`` below); a client that
should honour ``--train-steps`` calls ``setup.client.work(i, arrays)`` before replying.
Results go to ``bench/results/round_time.json`` under ``modes[<mode>]`` (a run replaces
only its own mode; the top-level ``config``/``runs`` mirror ``protocol-only``) and the
``round_time`` section of ``bench/README.md`` (every mode in the JSON)::

    .venv/bin/python bench/round_time.py --clients 5 10 20 --rounds 3 [--variants ...]
    .venv/bin/python bench/round_time.py --clients 5 10 20 --rounds 3 --train-steps 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the `bench` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np

from bench import _common

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

SECTION = "round_time"  #: the README section this benchmark owns
BASELINE = "flower-plaintext"  #: ``ratio_to_baseline`` is taken against this variant
#: Every run gets ``ratios[b]`` = its seconds / baseline b's (same n, same run).
BASELINES = (BASELINE, "securefed-plaintext")
Factory = Callable[["RoundSetup"], tuple["ServerApp", "ClientApp"]]
#: name -> factory building (ServerApp, ClientApp) for one run; see :func:`register_variant`.
VARIANTS: dict[str, Factory] = {}


def register_variant(name: str) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory(setup) -> (ServerApp, ClientApp)`` as ``name``."""

    def deco(factory: Factory) -> Factory:
        if name in VARIANTS:
            raise ValueError(f"variant {name!r} is already registered")
        VARIANTS[name] = factory
        return factory

    return deco


@dataclass(frozen=True)
class ClientSpec:
    """What a client needs (small: it is pickled into every Ray task): its weight and
    perturbation are functions of its index ``i`` = ``node_config["partition-id"]``."""

    seed: int = 0
    scale: float = 0.01
    weight_base: int = 100
    #: ``--train-steps``: real LoRA steps each client runs before replying (0: none).
    train_steps: int = 0
    backbone: str = "minilm-l6"
    num_labels: int = 5

    def weight(self, i: int) -> int:
        """``num_examples`` of client ``i``."""
        return self.weight_base + i

    def delta(self, i: int, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """Client ``i``'s perturbation: float32 uniform in ``±scale``, one per shape."""
        rng = np.random.default_rng([self.seed, i])
        return [rng.uniform(-self.scale, self.scale, s).astype(np.float32) for s in shapes]

    def reply(self, i: int, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """What client ``i`` sends back for global ``arrays``: ``arrays + delta(i)``."""
        deltas = self.delta(i, [np.shape(a) for a in arrays])
        return [np.asarray(a) + d for a, d in zip(arrays, deltas, strict=True)]

    def work(self, i: int, arrays: Sequence[np.ndarray]) -> None:
        """Client ``i``'s local compute before it replies: ``train_steps`` real LoRA
        steps from global ``arrays`` (:mod:`bench._local_training`), results discarded;
        nothing when ``train_steps == 0``."""
        if self.train_steps > 0:
            from bench._local_training import local_train

            local_train(self.train_steps, i, arrays, backbone=self.backbone,
                        num_labels=self.num_labels, seed=self.seed)


@dataclass(frozen=True)
class RoundSetup:
    """One run: payload (key order = array order), clients, rounds, timing file."""

    payload: Mapping[str, np.ndarray]
    num_clients: int
    rounds: int
    timings_path: Path
    client: ClientSpec = field(default_factory=ClientSpec)

    def initial_arrays(self) -> list[np.ndarray]:
        return [np.asarray(v) for v in self.payload.values()]

    def weight(self, i: int) -> int:
        return self.client.weight(i)

    def expected(self, global_arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The exact (float64) weighted mean of every client's reply to ``global_arrays``."""
        total = sum(self.weight(i) for i in range(self.num_clients))
        acc = [np.zeros(np.shape(a)) for a in global_arrays]
        for i in range(self.num_clients):
            for a, r in zip(acc, self.client.reply(i, global_arrays), strict=True):
                a += self.weight(i) * r.astype(np.float64)
        return [a / total for a in acc]

    def max_abs_value(self) -> float:
        """A bound on any value a client sends over the run (payload + drift)."""
        peak = max(float(np.max(np.abs(v))) for v in self.payload.values())
        return peak + (self.rounds + 1) * self.client.scale

    def plain_tolerance(self) -> float:
        """Float32 summation error allowance for a plaintext weighted mean."""
        return 1e-6 * max(1.0, self.max_abs_value()) * self.num_clients

    def timer(self) -> RoundTimer:
        return RoundTimer(self.timings_path)


class RoundTimer:
    """Server-side per-round wall clock and aggregate check, written as JSON.

    Use ``with timer.round(r): ...`` or ``timer.start(r)`` / ``timer.stop(r)`` (e.g.
    from a strategy's ``configure_train`` and ``aggregate_train``), then
    ``timer.check(r, actual, expected)`` outside the timed span, and ``timer.write(info)``
    once at the end of the ``ServerApp``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.seconds: dict[int, float] = {}
        self.errors: dict[int, float] = {}
        self._t0: dict[int, float] = {}

    def start(self, rnd: int) -> None:
        self._t0[rnd] = time.perf_counter()

    def stop(self, rnd: int) -> float:
        self.seconds[rnd] = time.perf_counter() - self._t0.pop(rnd)
        return self.seconds[rnd]

    @contextlib.contextmanager
    def round(self, rnd: int) -> Iterator[None]:
        self.start(rnd)
        try:
            yield
        finally:
            self.stop(rnd)

    def check(self, rnd: int, actual: Sequence[np.ndarray],
              expected: Sequence[np.ndarray]) -> float:
        """Record ``max |actual - expected|`` for round ``rnd`` (inf on a shape mismatch)."""
        if len(actual) != len(expected) or any(
                np.shape(a) != np.shape(e) for a, e in zip(actual, expected, strict=False)):
            err = float("inf")
        else:
            err = max(float(np.max(np.abs(np.asarray(a, np.float64) - e), initial=0.0))
                      for a, e in zip(actual, expected, strict=True))
        self.errors[rnd] = err
        return err

    def write(self, info: Mapping[str, Any] | None = None) -> Path:
        rows = [{"round": r, "seconds": s, "max_abs_error": self.errors.get(r)}
                for r, s in sorted(self.seconds.items())]
        return _common.write_json(self.path, {"rounds": rows, "info": dict(info or {})})


def _load_variants() -> None:
    """Register the built-in variants (idempotent)."""
    from bench import _flower_legacy

    for name, factory in (("flower-plaintext", _flower_legacy.flower_plaintext),
                          ("flower-secagg+", _flower_legacy.flower_secaggplus),
                          ("flower-secagg+plan", _flower_legacy.flower_secaggplus_plan)):
        VARIANTS.setdefault(name, factory)
    # HOOK: importing this module runs its @register_variant (securefed-plaintext,
    # securefed-secagg: Message API, AdapterFedAvg / SecureAggregation).
    from bench import _securefed_variants  # noqa: F401


def lora_payload(backbone: str = "minilm-l6", num_labels: int = 5, seed: int = 0,
                 r: int = 8, alpha: float = 16.0) -> dict[str, np.ndarray]:
    """The ``lora`` payload of ``bench/comm.py``: trainable tensors after applying
    LoRA to ``backbone`` + a seeded ``num_labels`` head."""
    from securefed.methods import create_method
    from securefed.models import build_classifier, resolve_backbone

    bb = resolve_backbone(backbone)
    method = create_method("lora", r=r, alpha=alpha)
    model = method.apply(build_classifier(bb, num_labels, seed=seed), bb.architecture,
                         seed=seed)
    return {k: np.array(v, dtype=np.float32) for k, v in method.payload(model).items()}


def run_variant(name: str, payload: Mapping[str, np.ndarray], num_clients: int,
                rounds: int, client: ClientSpec | None = None) -> dict[str, Any]:
    """One ``run_simulation`` of variant ``name``; its timings, errors and info.

    Raises
    ------
    AssertionError
        If a round is missing or an aggregate is off by more than the variant's
        ``tolerance``.
    """
    from flwr.simulation import run_simulation

    _load_variants()
    saved_env = dict(os.environ)  # a variant may point its nodes at a roster
    with tempfile.TemporaryDirectory(prefix="round-time-") as tmp:
        setup = RoundSetup(payload, num_clients, rounds, Path(tmp) / "timings.json",
                           client or ClientSpec())
        try:
            server_app, client_app = VARIANTS[name](setup)
            t0 = time.perf_counter()
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=num_clients,
                           backend_config={"client_resources": {"num_cpus": 1,
                                                                "num_gpus": 0.0}})
            wall = time.perf_counter() - t0
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
        if not setup.timings_path.exists():
            raise AssertionError(f"{name}: the ServerApp wrote no timings (it failed)")
        data = json.loads(setup.timings_path.read_text())
    rows, info = data["rounds"], data["info"]
    if [r["round"] for r in rows] != list(range(1, rounds + 1)):
        raise AssertionError(f"{name}: timed rounds {[r['round'] for r in rows]}")
    errors = [r["max_abs_error"] for r in rows]
    max_err = max(float("inf") if e is None else e for e in errors)
    if not max_err <= info["tolerance"]:
        raise AssertionError(f"{name}, n={num_clients}: aggregate off by {max_err:.3g} "
                             f"(tolerance {info['tolerance']:.3g})")
    secs = [r["seconds"] for r in rows]
    return {"variant": name, "num_clients": num_clients, "rounds": rounds,
            "round_seconds": secs, "warmup_seconds": secs[0],
            "median_seconds": statistics.median(secs[1:] or secs),
            "max_abs_error": max_err, "round_errors": errors,
            "bytes_up_per_client": info.get("bytes_up_per_client"),
            "simulation_wall_seconds": wall, "info": info}


def measure(payload: Mapping[str, np.ndarray], clients: Sequence[int], rounds: int,
            variants: Sequence[str], client: ClientSpec | None = None, *,
            quiet: bool = True) -> list[dict[str, Any]]:
    """:func:`run_variant` for every n and variant (variants side by side per n), with
    ``ratio_to_baseline`` filled in where :data:`BASELINE` ran for that n. ``quiet``
    hides Flower's INFO logs during the runs."""
    flwr_log = logging.getLogger("flwr")
    runs: list[dict[str, Any]] = []
    for n in clients:
        for name in variants:
            level = flwr_log.level
            if quiet:
                flwr_log.setLevel(logging.WARNING)
            try:
                runs.append(run_variant(name, payload, n, rounds, client))
            finally:
                flwr_log.setLevel(level)
            up = runs[-1]["bytes_up_per_client"]
            print(f"  n={n:<3} {name:<27} {runs[-1]['median_seconds']:.3f} s/round "
                  f"(warm-up {runs[-1]['warmup_seconds']:.3f} s, "
                  f"err {runs[-1]['max_abs_error']:.2g}"
                  + (f", {up:,.0f} B up/client" if up else "") + ")", file=sys.stderr)
        for b in BASELINES:
            base = next((r["median_seconds"] for r in runs
                         if r["num_clients"] == n and r["variant"] == b), None)
            for r in runs:
                if r["num_clients"] == n:
                    ratio = None if base is None else r["median_seconds"] / base
                    r.setdefault("ratios", {})[b] = ratio
                    if b == BASELINE:
                        r["ratio_to_baseline"] = ratio
    return runs


PROTOCOL_ONLY = "protocol-only"  #: mode name of ``--train-steps 0``
#: What the securefed SecAgg+ round is compared against (the issue's goals).
GOAL_VARIANT, GOAL_PLAIN, GOAL_RATIO = "securefed-secagg", "securefed-plaintext", 1.25
#: Malicious-server SecAgg+ against semi-honest (issue 10): time and uploaded bytes.
MALICIOUS_VARIANT, MALICIOUS_TIME, MALICIOUS_BYTES = "securefed-secagg-malicious", 1.3, 1.05
FLOWER_SECAGG = ("flower-secagg+", "flower-secagg+plan")


def mode_name(train_steps: int) -> str:
    """``"protocol-only"`` for 0, else ``"train-K-steps"``: the key in ``modes``."""
    return PROTOCOL_ONLY if train_steps <= 0 else f"train-{train_steps}-steps"


def _shares(r: Mapping[str, Any]) -> str:
    sa = r["info"].get("secaggplus")
    if sa is not None:
        return f"{sa['num_shares']} / {sa['reconstruction_threshold']}"
    ours = r["info"].get("securefed_secagg")
    if ours is not None:  # k neighbours + the client itself, as Flower counts
        return f"{ours['degree'] + 1} / {ours['threshold']}"
    return "–"


def _ratio(r: Mapping[str, Any] | None, base: str) -> str:
    value = None if r is None else r.get("ratios", {}).get(base)
    if value is None and r is not None and base == BASELINE:
        value = r.get("ratio_to_baseline")
    return "–" if value is None else f"{value:.2f}x"


def _mode_markdown(mode: str, entry: Mapping[str, Any]) -> list[str]:
    """Heading, round-time table and goal table of one mode."""
    cfg, runs = entry["config"], entry["runs"]
    steps = int(cfg.get("train_steps", 0))
    if steps:
        title = (f"**With local training (`--train-steps {steps}`, mode `{mode}`)**: "
                 f"before replying, every client of every variant runs {steps} AdamW "
                 f"steps of LoRA on `{cfg['backbone']}` (batch "
                 f"{cfg.get('train_batch', 16)}, sequence {cfg.get('train_seq_len', 64)}"
                 ", random token ids, 1 torch thread), then discards the result and "
                 "replies with its perturbation as in protocol-only mode, so the "
                 "aggregate check still holds and only the training *time* is real.")
    else:
        title = (f"**Protocol only (mode `{mode}`)**: clients do not train; a round is "
                 "protocol + aggregation + transport.")
    rows = [[r["num_clients"], r["variant"], f"{r['median_seconds']:.3f}",
             _ratio(r, BASELINE), _ratio(r, GOAL_PLAIN), f"{r['warmup_seconds']:.3f}",
             f"{r['max_abs_error']:.2e}", f"{r['info']['tolerance']:.2e}", _shares(r)]
            for r in runs]
    table = _common.markdown_table(
        ["n", "variant", "s / round", f"÷ {BASELINE}", f"÷ {GOAL_PLAIN}",
         "warm-up round (s)", "max abs error", "tolerance", "shares / threshold"],
        rows, "rlrrrrrrr")
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    title += (f" Variants measured: {', '.join(f'`{v}`' for v in variants)}; "
              f"measured {entry['machine']['date']}.")
    lines = [title, "", table, ""]
    by = {(r["num_clients"], r["variant"]): r for r in runs}
    goal_rows = []
    for n in dict.fromkeys(r["num_clients"] for r in runs):
        ours, plain = by.get((n, GOAL_VARIANT)), by.get((n, GOAL_PLAIN))
        if ours is None:
            continue
        cells: list[object] = [n]
        ratio = ours.get("ratios", {}).get(GOAL_PLAIN)
        cells += ["–" if ratio is None else f"{ratio:.2f}x",
                  "–" if ratio is None or plain is None
                  else ("pass" if ratio <= GOAL_RATIO else "**FAIL**")]
        flower = [by[n, v]["median_seconds"] for v in FLOWER_SECAGG if (n, v) in by]
        for v in FLOWER_SECAGG:
            cells.append("–" if (n, v) not in by else
                         f"{ours['median_seconds'] / by[n, v]['median_seconds']:.2f}x")
        cells.append("–" if not flower else
                     ("pass" if ours["median_seconds"] < min(flower) else "**FAIL**"))
        goal_rows.append(cells)
    if goal_rows:
        lines += [_common.markdown_table(
            ["n", f"{GOAL_VARIANT} ÷ {GOAL_PLAIN}", f"≤ {GOAL_RATIO}x"]
            + [f"÷ {v}" for v in FLOWER_SECAGG] + ["faster than Flower's SecAgg+"],
            goal_rows, "rrlrrl"), ""]
    lines += _malicious_goals(by)
    return lines


def malicious_ratios(by: Mapping[tuple[int, str], Mapping[str, Any]]
                     ) -> list[dict[str, Any]]:
    """Per n: ``securefed-secagg-malicious`` ÷ ``securefed-secagg`` in round time and
    uploaded bytes per client (``None`` where a side was not measured)."""
    out = []
    for n in sorted({k[0] for k in by}):
        mal, semi = by.get((n, MALICIOUS_VARIANT)), by.get((n, GOAL_VARIANT))
        if mal is None or semi is None:
            continue
        time_ratio = mal["median_seconds"] / semi["median_seconds"]
        b_mal, b_semi = mal.get("bytes_up_per_client"), semi.get("bytes_up_per_client")
        bytes_ratio = b_mal / b_semi if b_mal and b_semi else None
        out.append({"clients": n, "time_ratio": time_ratio, "bytes_ratio": bytes_ratio,
                    "bytes_malicious": b_mal, "bytes_semi_honest": b_semi})
    return out


def _malicious_goals(by: Mapping[tuple[int, str], Mapping[str, Any]]) -> list[str]:
    rows = [[r["clients"], f"{r['time_ratio']:.2f}x",
             "pass" if r["time_ratio"] <= MALICIOUS_TIME else "**FAIL**",
             "–" if r["bytes_malicious"] is None else f"{r['bytes_malicious']:,.0f}",
             "–" if r["bytes_semi_honest"] is None else f"{r['bytes_semi_honest']:,.0f}",
             "–" if r["bytes_ratio"] is None else f"{r['bytes_ratio']:.3f}x",
             "–" if r["bytes_ratio"] is None
             else ("pass" if r["bytes_ratio"] <= MALICIOUS_BYTES else "**FAIL**")]
            for r in malicious_ratios(by)]
    if not rows:
        return []
    return [f"Malicious-server SecAgg+ (`{MALICIOUS_VARIANT}`) against semi-honest "
            f"(`{GOAL_VARIANT}`), same run; goals ≤ {MALICIOUS_TIME}x time, ≤ "
            f"{MALICIOUS_BYTES}x uploaded bytes per client:", "",
            _common.markdown_table(
                ["n", "time ÷ semi-honest", f"≤ {MALICIOUS_TIME}x", "bytes up / client",
                 "semi-honest", "bytes ÷ semi-honest", f"≤ {MALICIOUS_BYTES}x"],
                rows, "rrlrrrl"), ""]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The ``round_time`` section of ``bench/README.md`` from a :func:`main` report:
    every mode in ``report["modes"]`` (or the top-level ``config``/``runs`` alone)."""
    m, cfg = report["machine"], report["config"]
    modes = report.get("modes") or {
        mode_name(int(cfg.get("train_steps", 0))): {"machine": m, "config": cfg,
                                                     "runs": report["runs"]}}
    ordered = sorted(modes, key=lambda k: int(modes[k]["config"].get("train_steps", 0)))
    lines = [
        "### Round time (`bench/round_time.py`)", "",
        f"Payload: `lora` (r={cfg['lora_r']}, alpha={cfg['lora_alpha']}) on "
        f"`{cfg['backbone']}`, {cfg['num_labels']}-label head: {cfg['params']:,} float32 "
        f"in {cfg['tensors']} tensors. Client i replies with the global plus a fixed "
        f"perturbation (uniform ±{cfg['scale']}) and weight 100 + i. Each variant runs "
        "in its own `run_simulation` (Ray, 1 CPU per client, so as many clients run at "
        "once as the machine has CPUs); the ServerApp times each round (send, every "
        "protocol stage, replies, aggregation; startup and evaluation excluded). "
        f"Seconds per round = median of rounds 2–{cfg['rounds']}; round 1 (Ray actors "
        "start, models load) is the warm-up. Ratios are against `flower-plaintext` and "
        "`securefed-plaintext` measured in the same run (same mode).", "",
    ]
    for mode in ordered:
        lines += _mode_markdown(mode, modes[mode])
    lines += [
        "`flower-*` use Flower's legacy API (`DefaultWorkflow`, legacy `FedAvg`, "
        "`NumPyClient`); the SecAgg+ ones add `SecAggPlusWorkflow` + `secaggplus_mod`. "
        "`flower-secagg+` uses 3 shares (2 neighbours) and threshold 2; "
        "`flower-secagg+plan` the neighbourhood of `securefed secagg plan` (dropout 0): "
        "num_shares = degree + 1 (the client's own share included), threshold = t. "
        "`securefed-*` use the Message API (`ServerApp` + `Strategy.start`, "
        "`ClientApp(mods=[secagg_mod])`): `securefed-plaintext` is `AdapterFedAvg`, "
        "`securefed-secagg` is `SecureAggregation(AdapterFedAvg)` with clipping range 8 "
        "and max weight 1000 (Flower's defaults), a 32-bit modulus and the degree k and "
        "threshold t that `securefed secagg plan` picks (shown as k + 1 / t); "
        "`securefed-secagg-k2` the same with k = 2, t = 2, the neighbourhood of "
        "`flower-secagg+` (our clients keep no share of their own). Both are "
        "labelled `lora` with `allow_inexact` (the check below is the weighted mean of "
        "the payload vectors, which sums compute exactly up to quantisation). Every "
        "aggregate is checked against the float64 weighted mean of the client payloads; "
        "*tolerance* is the variant's bound (float32 rounding in plaintext; the "
        "quantisation step × n × max weight / Σ weights for SecAgg+).", "",
        "The simulation engine polls: the grid pulls replies every 0.1 s and the engine "
        "picks up new messages every 0.1 s, so every server→clients exchange costs at "
        "least ~0.1 s whatever the work; plaintext makes 1 exchange a round, SecAgg+ 4 "
        "(securefed's: setup, share-keys, masked-input with the train message, unmask), "
        "and malicious-mode SecAgg+ 5 (a consistency round before unmask). "
        "In protocol-only mode that floor, not cryptography, dominates, so SecAgg+ "
        "cannot be within 1.25x of a 1-exchange plaintext round there; the training "
        "mode shows the ratio for a round whose clients do real work. Ray runs its "
        "workers at nice 15, so on a shared host other jobs slow the clients (most in "
        "training mode); the modes were measured in separate runs, each side by side.",
        "",
    ]
    sa = next((r["info"]["secaggplus"] for e in modes.values() for r in e["runs"]
               if "secaggplus" in r["info"]), None)
    if sa:
        lines += [f"Flower SecAgg+ settings otherwise at its defaults: clipping_range "
                  f"{sa['clipping_range']}, quantization_range "
                  f"2^{int(np.log2(sa['quantization_range']))}, modulus_range "
                  f"2^{int(np.log2(sa['modulus_range']))}, max_weight "
                  f"{sa['max_weight']:g}.", ""]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines.append(f"*{m['date']}, Python {m['python']}, {versions}, {m['cpu_count']} CPUs "
                 f"({m['platform']}).*")
    return "\n".join(lines)


def merge_report(previous: Mapping[str, Any] | None, mode: str,
                 entry: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON report after measuring ``mode``: ``modes[mode] = entry`` (every other
    mode of ``previous`` kept; a file from before modes existed counts as
    protocol-only), and the top-level ``machine``/``config``/``runs`` = the
    protocol-only entry when there is one, else ``entry``."""
    modes: dict[str, Any] = {}
    if previous:
        modes.update(previous.get("modes") or {})
        if not modes and "runs" in previous and "config" in previous:
            old_mode = mode_name(int(previous["config"].get("train_steps", 0)))
            modes[old_mode] = {k: previous[k] for k in ("machine", "config", "runs")
                               if k in previous}
    modes[mode] = dict(entry)
    top = modes.get(PROTOCOL_ONLY, entry)
    return {"benchmark": SECTION, "machine": top["machine"], "config": top["config"],
            "runs": top["runs"], "modes": modes}


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every variant for every n, merge into the JSON, write the README; 0 on
    success."""
    _load_variants()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (>= 2)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        choices=sorted(VARIANTS))
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--num-labels", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=0.01, help="perturbation range")
    parser.add_argument("--train-steps", type=int, default=0, metavar="K",
                        help="real LoRA training steps per client before replying "
                             "(0 = protocol only); results go to modes['train-K-steps']")
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR / "round_time.json",
                        help="JSON report; other modes already in it are kept")
    parser.add_argument("--readme", type=Path, default=_common.README_PATH)
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is the warm-up)")
    if args.train_steps < 0:
        parser.error("--train-steps must be >= 0")

    from bench._local_training import BATCH_SIZE, SEQ_LEN

    payload = lora_payload(args.backbone, args.num_labels, args.seed)
    mode = mode_name(args.train_steps)
    print(f"payload: {sum(v.size for v in payload.values()):,} params; variants "
          f"{args.variants}; n = {args.clients}; mode {mode}", file=sys.stderr)
    runs = measure(payload, args.clients, args.rounds, args.variants,
                   ClientSpec(seed=args.seed, scale=args.scale,
                              train_steps=args.train_steps, backbone=args.backbone,
                              num_labels=args.num_labels))
    entry: dict[str, Any] = {
        "machine": _common.machine_info(),
        "config": {"backbone": args.backbone, "num_labels": args.num_labels,
                   "method": "lora", "lora_r": 8, "lora_alpha": 16.0, "seed": args.seed,
                   "params": int(sum(v.size for v in payload.values())),
                   "tensors": len(payload), "raw_bytes": int(sum(v.nbytes for v in
                                                                 payload.values())),
                   "clients": args.clients, "rounds": args.rounds, "scale": args.scale,
                   "weights": "100 + client index", "baseline": BASELINE,
                   "baselines": list(BASELINES), "mode": mode,
                   "train_steps": args.train_steps, "train_batch": BATCH_SIZE,
                   "train_seq_len": SEQ_LEN,
                   "train_data": "random token ids (fixed per client), random labels; "
                                 "trained values discarded",
                   "engine": "flwr.simulation.run_simulation (ray), 1 CPU per client"},
        "runs": runs,
    }
    previous = None
    if args.out.exists():
        try:
            previous = json.loads(args.out.read_text())
        except json.JSONDecodeError:
            print(f"warning: {args.out} is not valid JSON; starting afresh", file=sys.stderr)
    report = merge_report(previous, mode, entry)
    _common.write_json(args.out, report)
    markdown = render_markdown(report)
    if not args.no_readme:
        _common.update_readme_section(SECTION, markdown, args.readme)
    print(markdown)
    return 0


if __name__ == "__main__":
    # Run through the package module so that `bench.round_time.VARIANTS` (where other
    # modules register) is the registry main() reads, not a `__main__` copy.
    from bench import round_time as _self

    sys.exit(_self.main())
