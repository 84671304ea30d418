"""Terminal output shared by every ``securefed`` command."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["ERROR_EXIT_CODE", "err", "fail", "out"]

#: Exit status of a command that refused its input.
ERROR_EXIT_CODE = 2
#: Results (tables, JSON) go to stdout.
out = Console()
#: Progress and errors go to stderr.
err = Console(stderr=True)


def fail(exc: Exception) -> NoReturn:
    """Print ``error: <message>`` on stderr (rich markup escaped) and exit with 2."""
    err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)  # one line
    raise typer.Exit(code=ERROR_EXIT_CODE)
