"""`vidcli export-onnx`."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("export-onnx")
    def export_onnx(
        run: Path = typer.Argument(..., help="Run folder to export."),
        out: Path = typer.Option(None, "--out", help="Output file (default: RUN/model.onnx)."),
        opset: int = typer.Option(None, "--opset", help="ONNX opset (default: the recipe's export.opset; "
                                  "Keras models 11-18, PyTorch models 10-20)."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
    ) -> None:
        """Export the run's best model to ONNX with labels and preprocessing inside; checks parity."""
        from vidcli.backends import registry
        from vidcli.exporting import export
        from vidcli.recipe import check_opset
        from vidcli.runs import Run

        opened = Run.open(run)
        if opset is not None:
            check_opset(opset, registry.backend_name(opened.recipe.model.arch), "--opset")
        result = export(opened, out, opset)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            from vidcli.console import out as stdout

            stdout.print(f"{result['path']}  (max abs diff {result['max_abs_diff']:.3g})")
