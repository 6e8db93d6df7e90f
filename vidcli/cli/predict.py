"""`vidcli predict`: top-k labels for clips. With an ONNX model it imports no DL framework."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape

from vidcli.cli.common import QUIET, Split
from vidcli.errors import BAD_INPUT, PARTIAL


def _emit(result: dict, as_json: bool) -> None:
    from vidcli.console import err, out

    if "error" in result:
        err.print(f"[bold red]error:[/bold red] {escape(result['error'])}", soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    elif "top_k" in result:
        out.print(f"[bold]{escape(result['source'])}[/bold]")
        for item in result["top_k"]:
            out.print(f"  {item['probability']:7.2%}  {escape(item['label'])}")


def _sources(items: list[str]) -> list[Path]:
    """Paths, folders and globs; `-` reads more paths from stdin, one per line."""
    from vidcli import inference

    expanded: list[str] = []
    for item in items:
        if item == "-":
            expanded.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            expanded.append(item)
    if not expanded:
        from vidcli.errors import VidcliError

        raise VidcliError("no inputs: give video files, folders or globs, or - to read paths from stdin")
    return inference.expand_sources(expanded)


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        sources: list[str] = typer.Argument(..., help="Video files, folders, globs, or - to read paths from stdin "
                                            "(also .npy volumes, or an .npz with --index).", show_default=False),
        model: Path = typer.Option(None, "--model", "-m", help="An .onnx file, a run folder (its model.onnx, else "
                                   "its best checkpoint), a checkpoint file, or a release name such as "
                                   "movinet_a0_base (default: the newest finished run).", show_default=False),
        top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many labels to show."),
        clips: int = typer.Option(1, "--clips", min=1, help="Average over N evenly spaced clips (long videos)."),
        runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where to look for the newest run."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line on stdout."),
        index: int = typer.Option(None, "--index", min=0, help="Volume N of an .npz data set (with --split).",
                                  show_default=False),
        split: Split = typer.Option("test", "--split", help="The .npz split --index reads."),
        stream: bool = typer.Option(False, "--stream", help="Feed a stream model (MoViNet stream, online TSM) one "
                                    "frame at a time (--json: one line per frame)."),
        batch: int = typer.Option(8, "--batch", min=1, help="Inputs per model call (decoded in parallel)."),
        threads: int = typer.Option(None, "--threads", min=0, help="ONNX Runtime threads per call (0: its default; "
                                    "default: 1 with --stream, where one frame is too little work to share, else 0).",
                                    show_default=False),
        quiet: bool = QUIET,
    ) -> None:
        """Classify clips: the top-k labels of each input.

        Exit codes: 0 all inputs classified; 3 some inputs failed (every result is still printed); 2 bad
        input (no input could be read, or a bad option); 1 the job failed.

        \b
        Examples:
          vidcli predict clip.mp4
          vidcli predict clips/ -m runs/quickstart/1/model.onnx --json
          find videos -name '*.mp4' | vidcli predict - --json > predictions.jsonl
          vidcli predict long_video.mp4 --clips 5 --top-k 3
          vidcli predict clip.mp4 --stream -m runs/movinet_a0_stream/1/model.onnx
          vidcli predict data/medmnist/organmnist3d_28.npz --index 5 --split test
        """
        from vidcli import models

        files = _sources(sources)
        if model is not None and not model.exists() and "/" not in str(model):
            from vidcli.exporting import release_onnx

            model = release_onnx(str(model)) or model  # a release name, e.g. movinet_a0_base
        choice = models.resolve(model, runs_dir)
        name = str(choice.path)
        if stream:
            m = models.open_stream(choice, 1 if threads is None else threads)
            models.announce(choice)
            results = _stream_results(m, files, top_k, as_json, name)
        else:
            from vidcli import inference

            m = models.open_model(choice, threads or 0)
            models.announce(choice)
            results = inference.predict(m, files, top_k, clips, index, split, name, batch=batch)
        failures = total = 0
        for result in results:
            total += 1
            failures += "error" in result
            _emit(result, as_json)
        if failures:
            raise typer.Exit(BAD_INPUT if failures == total else PARTIAL)


def _stream_results(m, files: list[Path], top_k: int, as_json: bool, name: str):
    """Frame by frame: every line in --json, else a live top-1 on a terminal and the final top-k."""
    from vidcli import streaming
    from vidcli.errors import VidcliError

    for src in files:
        last = None
        try:
            for last in streaming.predict_stream(m, src, top_k, name):
                if as_json:
                    yield last
                else:
                    best = last["top_k"][0]
                    streaming.live(f"{src.name}  frame {last['frame']}  {best['probability']:6.1%}  {best['label']}")
        except VidcliError as exc:
            streaming.live(None)
            yield {"source": str(src), "error": str(exc), "model": name}
            continue
        streaming.live(None)
        if not as_json and last is not None:
            yield {**last, "source": f"{last['source']}  ({last['step'] + 1} frames streamed)"}
