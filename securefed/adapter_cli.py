"""``securefed evaluate`` and ``securefed predict``: use an exported adapter.

``securefed evaluate ADAPTER_DIR [--data NAME] [--split test] [--json]``
    Accuracy and loss on a dataset's held-out split (default: the dataset the adapter
    was trained on, split with the run's seed and test fraction).
``securefed predict ADAPTER_DIR TEXT|IMAGE_PATH ... [--json]``
    The predicted label and its probability for each input.

See :mod:`securefed.adapters`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from securefed.exceptions import SecurefedError
from securefed.report.console import fail
from securefed.report.console import out as console

__all__ = ["evaluate", "predict"]

_BACKBONE_HELP = ("Base backbone (alias, folder or hub id); default: the one the adapter "
                  "records.")


def evaluate(
    adapter_dir: Annotated[Path, typer.Argument(help="An exported adapter (RUN_DIR/adapter).")],
    data: Annotated[str | None, typer.Option(
        "--data", help="Dataset name; default: the one the adapter was trained on.")] = None,
    split: Annotated[str, typer.Option(help="test (held-out) or train.")] = "test",
    seed: Annotated[int | None, typer.Option(
        help="Seed of the test split; default: the run's.")] = None,
    test_fraction: Annotated[float | None, typer.Option(
        help="Held-out fraction; default: the run's.")] = None,
    backbone: Annotated[str | None, typer.Option(help=_BACKBONE_HELP)] = None,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate an exported adapter on a dataset's held-out split: accuracy and loss."""
    from securefed.adapters import evaluate_adapter, load_adapter

    try:
        adapter = load_adapter(adapter_dir, backbone=backbone)
        result = evaluate_adapter(adapter, data, split=split, seed=seed,
                                  test_fraction=test_fraction, batch_size=batch_size)
    except SecurefedError as exc:
        fail(exc)
    if as_json:
        console.print_json(json.dumps(result))
        return
    console.print(f"{result['dataset']} {result['split']} split ({result['examples']} "
                  f"examples, seed {result['seed']}, test fraction {result['test_fraction']}): "
                  f"accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}",
                  soft_wrap=True)


def predict(
    adapter_dir: Annotated[Path, typer.Argument(help="An exported adapter (RUN_DIR/adapter).")],
    inputs: Annotated[list[str], typer.Argument(
        help="Texts (text backbones) or image files (image backbones).")],
    backbone: Annotated[str | None, typer.Option(help=_BACKBONE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predict a label, with its probability, for each text or image file."""
    from securefed.adapters import load_adapter
    from securefed.adapters import predict as predict_labels
    from securefed.report.tables import print_table

    try:
        adapter = load_adapter(adapter_dir, backbone=backbone)
        predictions = predict_labels(adapter, inputs)
    except SecurefedError as exc:
        fail(exc)
    if as_json:
        console.print_json(json.dumps([asdict(p) for p in predictions]))
        return
    table = Table(title=escape(f"predictions of {adapter_dir}"))
    for col in ("input", "label", "probability"):
        table.add_column(col)
    for p in predictions:
        table.add_row(escape(p.input), escape(p.label), f"{p.probability:.4f}")
    print_table(table)
