"""Options every command shares, declared once. Fixed choices are `Literal` annotations, so Typer checks them
and lists them in --help."""

from __future__ import annotations

from typing import Literal

import typer

Split = Literal["train", "val", "test"]
Checkpoint = Literal["best", "last"]


def _quiet(value: bool) -> bool:
    if value:
        from vidcli.console import set_quiet

        set_quiet(True)
    return value


QUIET = typer.Option(False, "--quiet", "-q", callback=_quiet,
                     help="No log lines or progress on stderr (warnings and errors still show).")
JSON = typer.Option(False, "--json", help="Print JSON to stdout (nothing else goes there).")
