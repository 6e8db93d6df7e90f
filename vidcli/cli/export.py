"""`vidcli export-onnx`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vidcli.cli.common import JSON, QUIET, Checkpoint


def register(app: typer.Typer) -> None:
    @app.command("export-onnx")
    def export_onnx(
        source: Path = typer.Argument(..., help="A run folder, or a recipe .yaml whose model.pretrained weights are "
                                      "exported without training.", show_default=False),
        out: Path = typer.Option(None, "--out", help="Output file (default: RUN/model.onnx; a recipe: NAME.onnx).",
                                 show_default=False),
        opset: int = typer.Option(None, "--opset", help="ONNX opset (default: the recipe's export.opset; "
                                  "Keras models 11-18, PyTorch models 10-20).", show_default=False),
        checkpoint: Checkpoint = typer.Option(None, "--checkpoint", help="Which of a run's checkpoints (default "
                                              "best).", show_default=False),
        set_: list[str] = typer.Option([], "--set", help="Override a recipe key (recipes only)."),
        labels: Path = typer.Option(None, "--labels", help="Class names, one per line (recipes only; default: the "
                                    "data's, else the release's Kinetics list, else numbered).", show_default=False),
        as_json: bool = JSON,
        quiet: bool = QUIET,
    ) -> None:
        """Export a model to ONNX with its model card inside (labels, sampling, resize rule, normalisation,
        layout); writes the file only when ONNX Runtime agrees with the framework.

        \b
        Examples:
          vidcli export-onnx runs/quickstart/1
          vidcli export-onnx runs/quickstart/1 --checkpoint last --out last.onnx --json
          vidcli export-onnx recipes/movinet_a0.yaml --out movinet_a0.onnx
          vidcli export-onnx recipes/tsm_r50_kinetics.yaml --labels kinetics400.txt
        """
        from vidcli import exporting
        from vidcli.errors import VidcliError

        if source.suffix.lower() in (".yaml", ".yml"):
            from vidcli import recipe as recipe_mod

            if checkpoint is not None:
                raise VidcliError("--checkpoint picks one of a run's checkpoints; a recipe is built from its "
                                  "model.pretrained weights")
            rec = recipe_mod.load(source, set_)
            result = exporting.export_recipe(rec, out or Path(f"{rec.name}.onnx"), opset, labels,
                                             {"recipe": str(source)})
        else:
            if set_ or labels is not None:
                raise VidcliError("--set and --labels apply to a recipe; a run keeps its own recipe and labels")
            from vidcli.runs import Run

            result = exporting.export(Run.open(source), out, opset, checkpoint or "best")
        if as_json:
            typer.echo(json.dumps(result))
        else:
            from vidcli.console import out as stdout

            stdout.print(f"{result['path']}  (max abs diff {result['max_abs_diff']:.3g})")
