"""`vidcli eval`, `vidcli confusion`, `vidcli precision-recall`: share cached predictions per split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer

Split = Literal["train", "val", "test"]

RUN = typer.Argument(..., help="Run folder, e.g. runs/quickstart/1.")
SPLIT = typer.Option("test", "--split", help="Which split to evaluate: train, val or test.")
JSON = typer.Option(False, "--json", help="Print JSON to stdout.")
BATCH = typer.Option(None, "--batch-size", min=1, help="Batch size (default: the recipe's).")
CLIPS = typer.Option(1, "--clips", min=1, help="Clips per video, averaged (data.sampling segments/dense).")
CROPS = typer.Option(1, "--crops", help="Crops per clip: 1, 3 or 10, averaged (data.sampling segments/dense).")


def _run(path: Path):
    from vidcli.runs import Run

    return Run.open(path)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(run: Path = RUN, split: Split = SPLIT, as_json: bool = JSON, batch_size: int = BATCH,
              clips: int = CLIPS, crops: int = CROPS) -> None:
        """Top-1, top-5, mean-class accuracy and loss on a split (also saved to metrics.json)."""
        from vidcli import evaluation

        result = evaluation.evaluate(_run(run), split, batch_size=batch_size, clips=clips, crops=crops)
        if as_json:
            typer.echo(json.dumps(result))
            return
        from rich.table import Table

        from vidcli.console import out

        table = Table(title=f"{run} · {split} ({result['num_samples']} clips)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("top1", "top5", "mean_class_accuracy", "loss"):
            table.add_row(key, f"{result[key]:.4f}")
        out.print(table)

    @app.command("confusion")
    def confusion(run: Path = RUN, split: Split = SPLIT, as_json: bool = JSON, batch_size: int = BATCH) -> None:
        """Confusion matrix: heatmap PNGs (counts and row-normalised) and a CSV in the run folder."""
        from vidcli import evaluation

        result = evaluation.confusion(_run(run), split, batch_size=batch_size)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            from vidcli.console import out

            out.print(f"{result['png']}\n{result['png_normalized']}\n{result['csv']}")

    @app.command("precision-recall")
    def precision_recall(run: Path = RUN, split: Split = SPLIT, as_json: bool = JSON, batch_size: int = BATCH) -> None:
        """Per-class precision, recall, F1, support and AP (table, CSV, JSON) and one-vs-rest PR curves."""
        from vidcli import evaluation

        result = evaluation.precision_recall(_run(run), split, batch_size=batch_size)
        if as_json:
            typer.echo(json.dumps(result))
            return
        from rich.table import Table

        from vidcli.console import out

        table = Table(title=f"{run} · {split}")
        cols = ["class", "precision", "recall", "f1", "support", "average_precision"]
        for c in cols:
            table.add_column(c, justify="left" if c == "class" else "right")
        for row in result["rows"]:
            table.add_row(*(f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in cols))
        out.print(table)
        out.print(result["png"])
