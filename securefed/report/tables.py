"""Tables on the terminal, in a pipe, and as Markdown.

Rich fits a table to the terminal and, when stdout is not one (a pipe, a file, a test
runner), to 80 columns: cells are folded or cut with an ellipsis. :func:`print_table`
prints a table at the width it needs instead whenever the console is not a terminal,
so ``securefed methods | grep lora`` sees every row and column in full.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from securefed.report.console import out

__all__ = ["markdown_table", "print_table"]

_MAX_WIDTH = 100_000


def print_table(table: Table, console: Console | None = None) -> None:
    """Print ``table`` on ``console`` (stdout); at full width when it is not a terminal."""
    console = console or out
    if console.is_terminal:
        console.print(table)
        return
    options = console.options.update_width(_MAX_WIDTH)
    width = Measurement.get(console, options, table).maximum
    wide = Console(file=console.file, width=max(width, 20), color_system=None,
                   highlight=False, soft_wrap=False)
    wide.print(table)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped), newline-terminated."""
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
