"""`vidcli eval`, `vidcli confusion`, `vidcli precision-recall`: any model (a run's checkpoint, a checkpoint
file or an exported .onnx), sharing cached predictions per split."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vidcli.cli.common import JSON, QUIET, Checkpoint, Split

MODEL = typer.Argument(..., help="A run folder (its best checkpoint), a checkpoint file in a run, or an .onnx file.",
                       show_default=False)
SPLIT = typer.Option("test", "--split", help="Which split to score.")
CHECKPOINT = typer.Option(None, "--checkpoint", help="A run's best (default) or last checkpoint.", show_default=False)
DATA = typer.Option(None, "--data", help="Data root to score on (default: the run's data.root; needed for an .onnx "
                    "file outside a run folder).", show_default=False)
BATCH = typer.Option(None, "--batch-size", min=1, help="Batch size (default: the recipe's).", show_default=False)
CLIPS = typer.Option(1, "--clips", min=1, help="Clips per video, averaged (spread evenly; segments: offset).")
CROPS = typer.Option(1, "--crops", help="Crops per clip: 1, 3 or 10, averaged (data.sampling segments or dense).")


def _target(model: Path, checkpoint: str | None, data: Path | None):
    from vidcli import evaluation

    return evaluation.target(model, checkpoint, data)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(model: Path = MODEL, split: Split = SPLIT, checkpoint: Checkpoint = CHECKPOINT, data: Path = DATA,
              batch_size: int = BATCH, clips: int = CLIPS, crops: int = CROPS, as_json: bool = JSON,
              quiet: bool = QUIET) -> None:
        """Top-1, top-5, mean-class accuracy and loss on a split (also saved to metrics.json).

        \b
        Examples:
          vidcli eval runs/quickstart/1
          vidcli eval runs/quickstart/1 --checkpoint last --split val
          vidcli eval runs/quickstart/1/model.onnx
          vidcli eval model.onnx --data data/synth --json
          vidcli eval runs/tsm_quickstart/1 --clips 2 --crops 3
        """
        from vidcli import evaluation

        result = evaluation.evaluate(_target(model, checkpoint, data), split, batch_size=batch_size, clips=clips,
                                     crops=crops)
        if as_json:
            typer.echo(json.dumps(result))
            return
        from rich.table import Table

        from vidcli.console import out

        views = f", {clips}x{crops} views" if (clips, crops) != (1, 1) else ""
        table = Table(title=f"{result['model']} · {split} ({result['num_samples']} clips{views})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("top1", "top5", "mean_class_accuracy", "loss"):
            table.add_row(key, f"{result[key]:.4f}")
        out.print(table)

    @app.command("confusion")
    def confusion(model: Path = MODEL, split: Split = SPLIT, checkpoint: Checkpoint = CHECKPOINT, data: Path = DATA,
                  batch_size: int = BATCH, clips: int = CLIPS, crops: int = CROPS, as_json: bool = JSON,
                  quiet: bool = QUIET) -> None:
        """Confusion matrix: heatmap PNGs (counts and row-normalised) and a CSV next to the model's metrics.

        \b
        Examples:
          vidcli confusion runs/quickstart/1
          vidcli confusion runs/quickstart/1/model.onnx --split val --json
        """
        from vidcli import evaluation

        result = evaluation.confusion(_target(model, checkpoint, data), split, batch_size=batch_size, clips=clips,
                                      crops=crops)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            from vidcli.console import out

            out.print(f"{result['png']}\n{result['png_normalized']}\n{result['csv']}")

    @app.command("precision-recall")
    def precision_recall(model: Path = MODEL, split: Split = SPLIT, checkpoint: Checkpoint = CHECKPOINT,
                         data: Path = DATA, batch_size: int = BATCH, clips: int = CLIPS, crops: int = CROPS,
                         as_json: bool = JSON, quiet: bool = QUIET) -> None:
        """Per-class precision, recall, F1, support and AP (table, CSV, JSON) and one-vs-rest PR curves.

        \b
        Examples:
          vidcli precision-recall runs/quickstart/1
          vidcli precision-recall runs/quickstart/1 --checkpoint last --json
        """
        from vidcli import evaluation

        result = evaluation.precision_recall(_target(model, checkpoint, data), split, batch_size=batch_size,
                                             clips=clips, crops=crops)
        if as_json:
            typer.echo(json.dumps(result))
            return
        from rich.table import Table

        from vidcli.console import out

        table = Table(title=f"{result['model']} · {split}")
        cols = ["class", "precision", "recall", "f1", "support", "average_precision"]
        for c in cols:
            table.add_column(c, justify="left" if c == "class" else "right")
        for row in result["rows"]:
            table.add_row(*(f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in cols))
        out.print(table)
        out.print(result["png"])
