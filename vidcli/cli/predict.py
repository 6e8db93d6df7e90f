"""`vidcli predict`: top-k labels for clips. With an ONNX model it imports no DL framework."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        sources: list[str] = typer.Argument(..., help="Video files, folders or globs (or .npy volumes)."),
        model: Path = typer.Option(None, "--model", "-m", help="An .onnx file or a run folder (default: newest run)."),
        top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many labels to show."),
        clips: int = typer.Option(1, "--clips", min=1, help="Average over N evenly spaced clips (long videos)."),
        runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where to look for the newest run."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line on stdout."),
    ) -> None:
        """Classify clips. Exit code 2 if any input could not be read (the others are still reported)."""
        from vidcli import inference
        from vidcli.console import err, out

        files = inference.expand_sources(sources)
        m = inference.resolve_model(model, runs_dir)
        failures = 0
        for result in inference.predict(m, files, top_k, clips):
            if "error" in result:
                failures += 1
                err.print(f"[bold red]error:[/bold red] {result['error']}", soft_wrap=True)
            if as_json:
                sys.stdout.write(json.dumps(result) + "\n")
                sys.stdout.flush()
            elif "top_k" in result:
                best = result["top_k"]
                out.print(f"[bold]{result['source']}[/bold]")
                for item in best:
                    out.print(f"  {item['probability']:7.2%}  {item['label']}")
        if failures:
            raise typer.Exit(2)
