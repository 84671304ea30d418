"""``securefed secagg ...``: the SecAgg+ sub-commands (a typer sub-app).

Mounted by :mod:`securefed.cli` as ``app.add_typer(secagg_app, name="secagg")``.

``securefed secagg plan --clients N --params P --dropout-rate R [--bits B] [--degree K]
[--threshold T] [--clipping-range C] [--target-failure F] [--json]``
    Size one round with :func:`securefed.secagg.plan.plan`: chosen k, t, bits,
    modulus, bytes per client per stage and the recovery-failure bound.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from securefed.exceptions import SecurefedError
from securefed.report.console import fail
from securefed.report.console import out as console
from securefed.report.tables import print_table
from securefed.secagg.plan import DEFAULT_CLIPPING_RANGE, DEFAULT_TARGET_FAILURE, plan

__all__ = ["secagg_app"]

secagg_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Secure aggregation (SecAgg+) tools.")


@secagg_app.callback()
def _secagg() -> None:
    """Secure aggregation (SecAgg+) tools."""



@secagg_app.command("plan")
def plan_cmd(
    clients: Annotated[int, typer.Option("--clients", help="Clients per round (n >= 2).")],
    params: Annotated[int, typer.Option("--params", help="Float values per client.")],
    dropout_rate: Annotated[float, typer.Option(
        "--dropout-rate", help="Per-client dropout probability in [0, 1).")],
    bits: Annotated[int | None, typer.Option(
        "--bits", help="Modulus exponent (default: the minimum without overflow).")] = None,
    degree: Annotated[int | None, typer.Option(
        "--degree", help="Neighbour-graph degree k (default: O(log n), raised to meet the "
        "failure target).")] = None,
    threshold: Annotated[int | None, typer.Option(
        "--threshold", help="Shamir threshold t (default floor(k/2) + 1).")] = None,
    clipping_range: Annotated[float, typer.Option(
        "--clipping-range", help="c of the input range [-c, c].")] = DEFAULT_CLIPPING_RANGE,
    target_failure: Annotated[float, typer.Option(
        "--target-failure", help="Target recovery-failure bound when choosing k."
    )] = DEFAULT_TARGET_FAILURE,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Size a SecAgg+ round: k, t, bits, bytes per client per stage, failure bound."""
    try:
        p = plan(clients, params, dropout_rate, clipping_range=clipping_range, bits=bits,
                 degree=degree, threshold=threshold, target_failure=target_failure)
    except SecurefedError as exc:
        fail(exc)
    if as_json:
        console.print_json(p.to_json())
        return
    table = Table(title=f"SecAgg+ plan: {p.num_clients:,} clients x {p.num_params:,} params, "
                        f"dropout {p.dropout_rate:g}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("degree k", f"{p.degree} ({p.degree_rule})"),
        ("threshold t", str(p.threshold)),
        ("bits", str(p.bits)),
        ("modulus", f"2^{p.bits} = {p.modulus:,}"),
        ("grid q_max / step", f"{p.q_max:,} / {p.step:.3g}"),
        ("mean error bound", f"{p.mean_error_bound:.3g}"),
        *((f"bytes: {stage}", f"{b:,}") for stage, b in p.stage_bytes.items()),
        ("bytes per client", f"{p.bytes_per_client:,}"),
        ("bytes, all clients", f"{p.bytes_total:,}"),
        ("upload vs float32", f"{100 * p.upload_overhead:+.2f} %"),
        ("recovery failure (upper bound)", f"{p.failure_probability:.3g}"),
        ("target met", f"{'yes' if p.meets_target else 'NO'} (target {p.target_failure:g})"),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    print_table(table)  # full width when piped
