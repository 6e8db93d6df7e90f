"""Options every command shares, declared once. Fixed choices are `Literal` annotations, so Typer checks them
and lists them in --help."""

from __future__ import annotations

import sys
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


def refuse_given(options: dict[str, object], why: str) -> None:
    """Options that would do nothing here, refused in one line naming those given (not None): `--a, --b: why`."""
    given = [flag for flag, value in options.items() if value is not None]
    if given:
        from vidcli.errors import VidcliError

        raise VidcliError(f"{', '.join(given)}: {why}")


def drop_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail again on the closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
