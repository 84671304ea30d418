"""The ``securefed`` command. Thin: it parses arguments, then calls the library.

Commands
--------
``securefed run CONFIG [--out DIR] [--overwrite] [--set table.key=value ...] [--engine ...]
[--dry-run]``
    Run a federated experiment (Flower simulation engine by default); a run directory
    that holds an earlier run is refused unless ``--overwrite``. Exits 130 on SIGINT,
    143 on SIGTERM, with ``summary.json`` saying ``status = "interrupted"``.
``securefed check CONFIG [--set ...] [--num-cpus N] [--num-gpus G] [--json]``
    Every check a run makes before it starts; prints the resolved config and the plan.
``securefed methods [--backbone ALIAS] [--json]``
    List tuning methods with trainable-parameter and payload sizes.
``securefed backbones`` / ``securefed datasets``
    List the registered aliases.
``securefed privacy epsilon|noise ...``
    Privacy accounting: epsilon of a DP-SGD schedule, or the noise for a target epsilon.
``securefed secagg plan --clients N --params P --dropout-rate R [--json]``
    Size a SecAgg+ deployment: graph degree, threshold, bits, bytes per stage.
``securefed report RUN [RUN ...] --out DIR``
    Regenerate a run's plots and metrics.csv, or compare several runs.
``securefed evaluate ADAPTER_DIR [--data NAME]`` / ``securefed predict ADAPTER_DIR INPUT ...``
    Use an exported adapter: held-out accuracy and loss, or labels of texts / images.
``securefed --version``
    Versions of securefed, Flower, torch, PEFT, transformers, Opacus and Python.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from securefed.exceptions import SecurefedError
from securefed.report.console import err, fail
from securefed.report.console import out as console
from securefed.report.tables import print_table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Privacy-hardened federated fine-tuning of PEFT adapters on Flower.")

ENGINES = ("simulation", "inprocess")



@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment TOML (see configs/).")],
    out: Annotated[Path | None, typer.Option("--out", help="Run directory.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override: table.key=value (repeatable).")] = None,
    engine: Annotated[str, typer.Option(
        help="simulation (Flower's engine) or inprocess (same apps, no Flower processes)."
    )] = "simulation",
    num_cpus: Annotated[int | None, typer.Option(
        help="CPUs per virtual client ([resources] client_cpus, default 2).")] = None,
    num_gpus: Annotated[float | None, typer.Option(
        help="GPUs per virtual client ([resources] client_gpus, default 0).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check and print the plan as `securefed check`; start nothing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the earlier run in the run directory (cleared first).")
    ] = False,
) -> None:
    """Run a federated experiment and write its run directory."""
    from securefed.app.check_cli import resolve_config, show_plan
    from securefed.app.launcher import (
        interrupt_signal,
        preflight,
        run_inprocess,
        run_simulation,
        signals_as_interrupts,
    )
    from securefed.app.logs import silence_known_warnings
    from securefed.report.progress import round_progress
    from securefed.rundir import prepare_run_dir

    silence_known_warnings()
    run_dir: Path | None = None
    try:
        with signals_as_interrupts():
            if engine not in ENGINES:
                raise SecurefedError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
            cfg = resolve_config(config, set_, num_cpus, num_gpus)
            plan = preflight(cfg, engine=engine)
            if dry_run:
                show_plan(cfg, plan)
                return
            # refused or cleared here, before the bar follows the folder
            run_dir = prepare_run_dir(out or Path(cfg.experiment.out_dir), overwrite=overwrite)
            err.print(f"run directory: {run_dir}")
            with round_progress(run_dir, cfg.federation.rounds, console=err):
                if engine == "simulation":
                    summary = run_simulation(cfg, run_dir)
                else:
                    summary = run_inprocess(cfg, run_dir)
    except SecurefedError as exc:
        fail(exc)
    except KeyboardInterrupt as exc:
        signum = interrupt_signal(exc)
        where = f"; every process stopped; see {run_dir / 'summary.json'}" if run_dir else ""
        err.print(f"[yellow]interrupted by {signal.Signals(signum).name}{where}[/yellow]")
        raise typer.Exit(code=128 + signum) from None
    console.print_json(json.dumps({k: summary[k] for k in (
        "method", "dataset", "final_accuracy", "trainable_params",
        "bytes_up_per_client_round", "wall_seconds", "adapter_dir")}))


@app.command()
def methods(
    backbone: Annotated[str, typer.Option(help="Backbone alias, folder or hub id.")] = "minilm-l6",
    num_labels: Annotated[int, typer.Option(help="Classes of the task head.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List tuning methods with trainable-parameter and payload sizes on a backbone."""
    from securefed.methods.inventory import method_inventory

    try:
        rows = method_inventory(backbone, num_labels=num_labels)
    except SecurefedError as exc:
        fail(exc)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"tuning methods on {backbone}")
    for col in ("method", "trainable params", "% of full", "payload bytes", "aggregation",
                "exact under sum", "export"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["method"], f"{r['trainable_params']:,}", f"{r['percent_of_full']:.3f}",
                      f"{r['payload_bytes']:,}", r["aggregation"], str(r["exact_under_sum"]),
                      r["export_format"])
    print_table(table)


@app.command()
def backbones() -> None:
    """List backbone aliases (a local Hugging Face folder or hub id also works)."""
    from securefed.models import BACKBONES

    for name in BACKBONES.names():
        console.print(name)


@app.command()
def datasets() -> None:
    """List offline dataset names (hub dataset ids also work when online)."""
    from securefed.data import dataset_names

    for name in dataset_names():
        console.print(name)


def _mount_subcommands() -> None:
    from securefed.adapter_cli import evaluate, predict
    from securefed.app.check_cli import check
    from securefed.privacy.cli import privacy_app
    from securefed.report.cli import report
    from securefed.secagg.cli import secagg_app

    app.command()(check)
    app.add_typer(privacy_app, name="privacy")
    app.add_typer(secagg_app, name="secagg")
    for command in (report, evaluate, predict):
        app.command()(command)


def _version(value: bool) -> None:
    if value:
        from securefed.versions import version_line

        console.print(version_line(), highlight=False, soft_wrap=True)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the versions of securefed and the libraries it runs on.")] = False,
) -> None:
    """Privacy-hardened federated fine-tuning of PEFT adapters on Flower."""
    from securefed.app.logs import silence_known_warnings

    silence_known_warnings()  # every command: known third-party deprecations stay quiet


_mount_subcommands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
