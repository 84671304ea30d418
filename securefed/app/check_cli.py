"""``securefed check``: validate a config and print its plan, starting nothing.

Mounted by :mod:`securefed.cli` as a top-level command; ``securefed run --dry-run``
prints the same through :func:`show_plan`.

``securefed check CONFIG [--set table.key=value ...] [--num-cpus N] [--num-gpus G]
[--engine simulation|inprocess] [--json]``
    Resolve the config (overrides applied), run every check a run makes before it
    starts (:func:`securefed.app.check.check_config`), print the resolved config as
    TOML and the plan as a table (or both as one JSON object ``{"config": ...,
    "plan": ...}``), exit 0. A failed check prints ``error: ...`` and exits 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import tomli_w
import typer
from rich.markup import escape
from rich.table import Table

from securefed.app.plan import NOISE_TO_SIGNAL_HINT
from securefed.config import ExperimentConfig, apply_overrides, load_config
from securefed.exceptions import SecurefedError
from securefed.report.console import fail
from securefed.report.console import out as console

if TYPE_CHECKING:
    from securefed.app.plan import RunPlan

__all__ = ["check", "resolve_config", "resource_overrides", "show_plan"]


def resource_overrides(num_cpus: int | None, num_gpus: float | None) -> list[str]:
    """``--num-cpus`` / ``--num-gpus`` as ``[resources]`` overrides (``--set`` form)."""
    out = [] if num_cpus is None else [f"resources.client_cpus={num_cpus}"]
    return out + ([] if num_gpus is None else [f"resources.client_gpus={float(num_gpus)}"])


def resolve_config(path: Path, overrides: list[str] | None, num_cpus: int | None = None,
                   num_gpus: float | None = None) -> ExperimentConfig:
    """Load ``path`` and apply ``--set`` and the resource flags (ConfigError)."""
    return apply_overrides(load_config(path),
                           [*(overrides or []), *resource_overrides(num_cpus, num_gpus)])


def _spread(values: tuple[int, ...]) -> str:
    ordered = sorted(values)
    return f"{ordered[0]:,} / {ordered[len(ordered) // 2]:,} / {ordered[-1]:,}"


def _rows(plan: RunPlan) -> list[tuple[str, str]]:
    """The table rows: (quantity, value)."""
    p = plan
    rows = [
        ("engine", p.engine),
        ("method / backbone / dataset", f"{p.method} / {p.backbone} / {p.dataset} "
                                        f"({p.modality})"),
        ("clients", f"{p.num_clients:,}"),
        ("clients per round", f"{p.clients_per_round:,} (a round needs "
                              f"{p.required_replies:,} valid replies)"),
        ("federated evaluation clients", f"{p.evaluate_clients:,}"),
        ("rounds", f"{p.rounds:,}"),
        ("examples: train / test", f"{p.train_examples:,} / {p.test_examples:,}"),
        ("train examples per client (min / median / max)", _spread(p.train_sizes)),
        ("val examples per client", _spread(p.val_sizes)),
        ("trainable params", f"{p.trainable_params:,}"),
        ("payload", f"{p.payload_values:,} values, {p.payload_bytes:,} bytes"),
        ("bytes up per client per round", f"{p.bytes_up:,}"),
        ("bytes down per client per round", f"{p.bytes_down:,}"),
    ]
    if p.engine == "simulation":
        rows += [("resources per client", f"{p.client_cpus} CPUs, {p.client_gpus:g} GPUs"),
                 ("clients training at once", str(p.parallel_clients))]
    rows += _secure_rows(p.secure) + _dp_rows(p.dp, p.user_dp)
    rows += [(f"seed: {k}", str(v)) for k, v in p.seeds.items()]
    return rows


def _secure_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    if s.get("mode") == "secagg":
        return [("secure", f"SecAgg+ ({s['adversary']})"),
                ("SecAgg+ k / t / bits", f"{s['degree']} / {s['threshold']} / {s['bits']}"),
                ("SecAgg+ masked values", f"{s['masked_values']:,}"),
                *((f"SecAgg+ bytes: {stage}", f"{b:,}") for stage, b in
                  s["stage_bytes"].items()),
                ("SecAgg+ unmask failure (upper bound)",
                 f"{s['failure_probability']:.3g} at dropout rate {s['dropout_rate']:g}")]
    if s.get("mode") == "ckks":
        return [("secure", f"CKKS ({s['key_role']})"),
                ("CKKS ciphertexts per client", f"{s['ciphertexts']} for "
                                                f"{s['encrypted_values']:,} values "
                                                f"({s['expansion']:.1f}x float32)")]
    return [("secure", "none")]


def _dp_rows(dp: dict[str, Any] | None, user: dict[str, Any] | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if dp is not None:
        sigma = " / ".join(f"{c['noise_multiplier']:.4g} ({c['train_examples']:,} examples)"
                           for c in dp["clients"])
        how = "calibrated" if dp["calibrated"] else "given"
        rows += [("DP-SGD sigma, smallest / largest client", sigma),
                 ("DP-SGD noise", f"{how}, {dp['accountant']} accountant, clip norm "
                                  f"{dp['max_grad_norm']:g}"),
                 ("DP-SGD epsilon after all rounds", f"{dp['epsilon_max']:.4g} (target "
                  f"{dp['target_epsilon']:g}, budget {dp['budget_epsilon']:g}, delta "
                  f"{dp['delta']:g})")]
        ratio = dp.get("noise_to_signal_max")
        if ratio is not None:
            hint = (" (above ~5 DP-SGD learns little: train fewer parameters, e.g. "
                    "method head or bitfit, or use larger batches; docs/privacy.md)"
                    if ratio > NOISE_TO_SIGNAL_HINT else "")
            rows.append(("DP-SGD noise / signal per coordinate", f"{ratio:.3g}{hint}"))
        if dp["first_refused_round"] is not None:
            rows.append(("DP-SGD budget stop", f"clients refuse from round "
                                               f"{dp['first_refused_round']}"))
    if user is not None:
        how = "calibrated" if user["calibrated"] else "given"
        rows += [("user-level DP z", f"{user['noise_multiplier']:.4g} ({how}, "
                                     f"{user['clipping']}, q = {user['sample_rate']:g})"),
                 ("user-level epsilon after all rounds", f"{user['epsilon']:.4g} (target "
                  f"{user['target_epsilon']:g}, budget {user['budget_epsilon']:g}, delta "
                  f"{user['delta']:g})")]
        if user["first_refused_round"] is not None:
            rows.append(("user-level budget stop", f"the server refuses round "
                                                   f"{user['first_refused_round']}"))
    return rows


def show_plan(config: ExperimentConfig, plan: RunPlan, *, as_json: bool = False) -> None:
    """Print the resolved config and the plan (TOML and a table, or one JSON object)."""
    if as_json:
        console.print_json(json.dumps({"config": config.to_dict(), "plan": plan.to_dict()}))
        return
    console.out(tomli_w.dumps(config.to_dict()), highlight=False)
    table = Table(title="plan")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, value in _rows(plan):
        table.add_row(escape(name), escape(value))
    console.print(table)


def check(
    config: Annotated[Path, typer.Argument(help="Experiment TOML (see configs/).")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override: table.key=value (repeatable).")] = None,
    num_cpus: Annotated[int | None, typer.Option(
        help="CPUs per virtual client ([resources] client_cpus).")] = None,
    num_gpus: Annotated[float | None, typer.Option(
        help="GPUs per virtual client ([resources] client_gpus).")] = None,
    engine: Annotated[str, typer.Option(
        help="simulation (Flower's engine) or inprocess.")] = "simulation",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check a config as a run would, print it resolved and its plan; start nothing."""
    from securefed.app.check import check_config

    try:
        cfg = resolve_config(config, set_, num_cpus, num_gpus)
        plan = check_config(cfg, engine=engine)
    except SecurefedError as exc:
        fail(exc)
    show_plan(cfg, plan, as_json=as_json)
