"""`vidcli predict`: top-k labels for clips. With an ONNX model it imports no DL framework."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        sources: list[str] = typer.Argument(..., help="Video files, folders or globs (or .npy volumes, or an .npz "
                                            "with --index)."),
        model: Path = typer.Option(None, "--model", "-m", help="An .onnx file or a run folder (default: newest run)."),
        top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many labels to show."),
        clips: int = typer.Option(1, "--clips", min=1, help="Average over N evenly spaced clips (long videos)."),
        runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where to look for the newest run."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line on stdout."),
        index: int = typer.Option(None, "--index", min=0, help="Volume N of an .npz data set (with --split)."),
        split: str = typer.Option("test", "--split", help="The .npz split --index reads: train, val or test."),
        stream: bool = typer.Option(
            False, "--stream", help="Feed a MoViNet stream model one frame at a time (--json: one line per frame)."
        ),
    ) -> None:
        """Classify clips. Exit code 2 if any input could not be read (the others are still reported)."""
        from vidcli import inference
        from vidcli.console import err, out

        files = inference.expand_sources(sources)
        if stream:
            _predict_stream(files, model, runs_dir, top_k, as_json)
            return
        m = inference.resolve_model(model, runs_dir)
        failures = 0
        for result in inference.predict(m, files, top_k, clips, index, split):
            if "error" in result:
                failures += 1
                err.print(f"[bold red]error:[/bold red] {escape(result['error'])}", soft_wrap=True)
            if as_json:
                sys.stdout.write(json.dumps(result) + "\n")
                sys.stdout.flush()
            elif "top_k" in result:
                best = result["top_k"]
                out.print(f"[bold]{escape(result['source'])}[/bold]")
                for item in best:
                    out.print(f"  {item['probability']:7.2%}  {escape(item['label'])}")
        if failures:
            raise typer.Exit(2)


def _predict_stream(files: list[Path], model: Path | None, runs_dir: Path, top_k: int, as_json: bool) -> None:
    """Frame by frame: JSON lines on stdout, or a live top-1 on a terminal's stderr and the final top-k."""
    from vidcli import streaming
    from vidcli.console import err, out
    from vidcli.errors import VidcliError

    m = streaming.open_stream_model(model, runs_dir)
    failures = 0
    for src in files:
        last = None
        try:
            for last in streaming.predict_stream(m, src, top_k):
                if as_json:
                    sys.stdout.write(json.dumps(last) + "\n")
                    sys.stdout.flush()
                else:
                    best = last["top_k"][0]
                    streaming.live(f"{src.name}  frame {last['frame']}  {best['probability']:6.1%}  {best['label']}")
        except VidcliError as exc:
            failures += 1
            streaming.live(None)
            err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
            if as_json:
                sys.stdout.write(json.dumps({"source": str(src), "error": str(exc), "model": m.info.source}) + "\n")
            continue
        streaming.live(None)
        if not as_json and last is not None:
            out.print(f"[bold]{last['source']}[/bold]  ({last['step'] + 1} frames streamed)")
            for item in last["top_k"]:
                out.print(f"  {item['probability']:7.2%}  {item['label']}")
    if failures:
        raise typer.Exit(2)
