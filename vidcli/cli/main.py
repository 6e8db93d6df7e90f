"""The `vidcli` command tree. Each group lives in its own module; none imports a DL framework."""

from __future__ import annotations

import sys
import traceback

import typer
from typer.core import TyperGroup

from vidcli import __version__
from vidcli.errors import VidcliError

_state = {"debug": False}


class VidcliGroup(TyperGroup):
    """Turns user errors into one red line and an exit code, Ctrl-C into exit 130."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        """Usage errors (unknown option, missing argument) as one `error:` line too, not a boxed panel."""
        from vidcli.console import set_quiet

        set_quiet(False)  # --quiet holds for one command (several run in one process under tests)
        try:
            return self._main(*args, standalone_mode=standalone_mode, **kwargs)
        finally:
            set_quiet(False)

    def _main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as exc:
            if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):  # not a Click error
                if type(exc).__name__ == "Abort":
                    _error_line("aborted")
                    sys.exit(1)
                raise
            message = exc.format_message()
            if message:  # empty when the help was shown instead (no arguments)
                ctx = getattr(exc, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                _error_line(message + hint)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except VidcliError as exc:
            if _state["debug"]:
                traceback.print_exc()
            _error_line(str(exc))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if _state["debug"]:
                traceback.print_exc()
            _error_line("interrupted")
            sys.exit(130)
        except BrokenPipeError:  # the reader of stdout left (`| head`): stop quietly, as it asked
            from vidcli.cli.common import drop_stdout

            drop_stdout()
            sys.exit(0)


def _error_line(message: str) -> None:
    from rich.markup import escape

    from vidcli.console import err

    # escaped: a path like data/[x]/clip.mp4 is text, not markup
    err.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


app = typer.Typer(
    cls=VidcliGroup,
    name="vidcli",
    help="Video classification from the command line: data, training, evaluation, export, prediction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vidcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    _state["debug"] = debug
    if debug:
        import os

        os.environ["VIDCLI_DEBUG"] = "1"


def _register() -> None:
    from vidcli.cli import benchmark, data, evaluate, export, predict, train

    app.add_typer(data.app, name="data")
    train.register(app)
    evaluate.register(app)
    export.register(app)
    predict.register(app)
    benchmark.register(app)


_register()


def main() -> None:
    app()
