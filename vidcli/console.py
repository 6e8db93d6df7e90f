"""Where output goes: results to stdout, everything else (logs, progress, warnings) to stderr.

Progress bars appear only when stderr is a terminal, so pipelines and CI logs stay clean. `--quiet` (every
command has it) silences log lines and progress; warnings and errors always show, since they say something
the user has to know.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
_state = {"quiet": False}


def set_quiet(on: bool = True) -> None:
    _state["quiet"] = on


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """`--quiet` inside the block: no log lines or progress bars; warnings and `error` lines still print."""
    was, _state["quiet"] = _state["quiet"], enabled or _state["quiet"]
    try:
        yield
    finally:
        _state["quiet"] = was


def log(message: str) -> None:
    """Plain text: paths and messages may contain brackets that Rich would read as markup."""
    if not _state["quiet"]:
        err.print(message, markup=False)


def warn(message: str) -> None:
    err.print("warning: ", style="yellow", end="", markup=False)
    err.print(message, markup=False)


def error(message: str) -> None:
    """One failed input among many (the run goes on); never silenced."""
    err.print("error: ", style="bold red", end="", markup=False)
    err.print(message, markup=False)


class Advance(Protocol):
    def __call__(self, n: int = 1) -> None: ...


@contextlib.contextmanager
def progress(total: int | None, description: str) -> Iterator[Advance]:
    """A Rich progress bar on stderr when it is a TTY; a no-op otherwise. Yields `advance(n=1)`."""
    if _state["quiet"] or not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
