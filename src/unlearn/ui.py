"""Terminal output: rich progress bars and tables (silent on non-main processes)."""
from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


@contextlib.contextmanager
def progress(enabled: bool = True):
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                   console=console, disable=not enabled, transient=False)
    with bar:
        yield bar


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    out = Table(title=title)
    for column in columns:
        out.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        out.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    return out
