"""`vidcli export-onnx`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vidcli.cli.common import JSON, QUIET, Checkpoint


def register(app: typer.Typer) -> None:
    @app.command("export-onnx")
    def export_onnx(
        run: Path = typer.Argument(..., help="Run folder to export.", show_default=False),
        out: Path = typer.Option(None, "--out", help="Output file (default: RUN/model.onnx).", show_default=False),
        opset: int = typer.Option(None, "--opset", help="ONNX opset (default: the recipe's export.opset).",
                                  show_default=False),
        checkpoint: Checkpoint = typer.Option("best", "--checkpoint", help="Which of the run's checkpoints."),
        as_json: bool = JSON,
        quiet: bool = QUIET,
    ) -> None:
        """Export a run's model to ONNX with its model card inside (labels, sampling, resize rule, normalisation,
        layout); writes the file only when ONNX Runtime agrees with the framework.

        \b
        Examples:
          vidcli export-onnx runs/quickstart/1
          vidcli export-onnx runs/quickstart/1 --checkpoint last --out last.onnx --json
        """
        from vidcli.exporting import export
        from vidcli.runs import Run

        result = export(Run.open(run), out, opset, checkpoint)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            from vidcli.console import out as stdout

            stdout.print(f"{result['path']}  (max abs diff {result['max_abs_diff']:.3g})")
