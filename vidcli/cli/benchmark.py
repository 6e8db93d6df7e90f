"""`vidcli benchmark`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vidcli.cli.common import QUIET, refuse_given


def register(app: typer.Typer) -> None:
    @app.command("benchmark")
    def benchmark(
        model: Path = typer.Argument(None, help="Run folder, recipe .yaml (built with random weights) or .onnx file "
                                     "(default: the newest run).", show_default=False),
        formats: str = typer.Option(None, "--formats", help="Comma-separated keras, torch, onnx (default: every "
                                    "format the model has)."),
        batch: str = typer.Option(None, "--batch", help="Batch sizes, e.g. 1,8 (default: 1; with --data: the "
                                  "recipe's train.batch_size)."),
        warmup: int = typer.Option(None, "--warmup", min=0, help="Untimed calls first (default 3).",
                                   show_default=False),
        runs: int = typer.Option(None, "--runs", min=1, help="Timed calls per row (default 10).", show_default=False),
        seconds: float = typer.Option(None, "--seconds", min=0.001, help="Time each row for this many seconds "
                                      "instead of --runs."),
        threads: int = typer.Option(None, "--threads", min=1, help="Threads for the framework and ONNX Runtime "
                                    "(default: their own choice)."),
        device: str = typer.Option(None, "--device", help="auto (default): a GPU wherever a format can use one; "
                                   "cpu; or cuda (an error if a format cannot)."),
        classes: int = typer.Option(None, "--classes", min=1, help="A recipe's class count (default: its data's, "
                                    "else 10)."),
        set_: list[str] = typer.Option([], "--set", help="Override a recipe key, e.g. --set data.size=[112,112]."),
        data: bool = typer.Option(False, "--data", help="Time the training input pipeline alone instead (clips/s "
                                  "from disk to batches)."),
        workers: int = typer.Option(None, "--workers", min=0, help="With --data: loader workers (default: the "
                                    "recipe's data.workers)."),
        epochs: int = typer.Option(None, "--epochs", min=1, help="With --data: whole epochs per setting, each from "
                                   "a fresh pipeline; the first is cold (default 3)."),
        cache: str = typer.Option(None, "--cache", help="With --data: the decoded-frame cache both (default), on "
                                  "or off."),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="With --data: the frame cache's folder (default: "
                                       "an empty temporary one, so the first epoch is cold)."),
        runs_dir: Path = typer.Option(None, "--runs-dir", help="Where to look for the newest run when no model is "
                                      "given (default: runs).", show_default=False),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout instead of the table."),
        quiet: bool = QUIET,
    ) -> None:
        """Time inference in every format a model has (median latency, clips/s, max |diff| to the framework),
        or with --data the input pipeline.

        \b
        Examples:
          vidcli benchmark runs/quickstart/1
          vidcli benchmark recipes/tsm_r50_kinetics.yaml --batch 1,8 --threads 1
          vidcli benchmark model.onnx --device cuda --json
          vidcli benchmark runs/quickstart/1 --data
        """
        from vidcli import benchmarking
        from vidcli.errors import VidcliError

        batches = benchmarking.parse_batches(batch) if batch is not None else None
        device = benchmarking.parse_device(device) if device is not None else None
        if data:
            refuse_given({"--formats": formats, "--threads": threads, "--device": device, "--classes": classes,
                          "--warmup": warmup, "--runs": runs, "--seconds": seconds},
                         "not used with --data, which times whole epochs of the input pipeline (--epochs)")
        else:
            refuse_given({"--workers": workers, "--epochs": epochs, "--cache": cache, "--cache-dir": cache_dir},
                         "applies to --data only")
        if runs_dir is not None and model is not None:
            raise VidcliError("--runs-dir is where the default run is looked for; a model was given")
        if runs is not None and seconds is not None:
            raise VidcliError("--runs and --seconds: time each row by a number of calls or by seconds, not both")
        target = benchmarking.resolve(model, runs_dir or Path("runs"), set_, classes)
        if data:
            result = benchmarking.benchmark_data(target, batches, epochs=epochs or 3, cache=(cache or "both").lower(),
                                                 cache_dir=cache_dir, workers=workers)
        else:
            result = benchmarking.benchmark_models(
                target, benchmarking.parse_formats(formats, target), batches or [1],
                warmup=3 if warmup is None else warmup, runs_=runs or 10, seconds=seconds, threads=threads or 0,
                device=device or "auto")
        if as_json:
            typer.echo(json.dumps(result))
        else:
            _print_table(result)


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _rate(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _print_table(result: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from vidcli.console import out

    s = result["settings"]
    if result["mode"] == "data":
        d = result["data"]
        shape = "x".join(map(str, d["clip_shape"]))
        where = f" · frame cache {d['cache']['folder']}" if d["cache"] and not d["cache"]["temporary"] else ""
        table = Table(title=escape(f"{d['root']} · train split ({d['clips']} clips of {shape})"),
                      caption=escape(f"whole epochs, each from a fresh pipeline: the first (cold), the median of "
                                     f"the others (warm); frame cache on or off{where}"))
        for name in ("pipeline", "batch", "workers", "cache", "epoch", "s/epoch", "clips/s", "CPU ms/clip"):
            table.add_column(name, justify="left" if name in ("pipeline", "cache", "epoch") else "right")
        for r in result["rows"]:
            table.add_row(r["pipeline"], str(r["batch"]), str(r["workers"]), r["cache"], r["epoch"],
                          _ms(r["seconds"]), _rate(r["clips_per_s"]), _ms(r["cpu_ms_per_clip"]))
        out.print(table)
        return
    timed = f"{s['seconds']:g} s of calls" if s["seconds"] else f"median of {s['runs']}"
    m = result["model"]
    shape = "x".join(map(str, m["input_shape"]))
    tol = m["tolerance"]
    versus = f"max |diff| to {m['backend']} logits" if m["backend"] else "no framework to compare with"
    table = Table(title=escape(f"{m['source']} · {m['arch'] or 'model'} · input Nx{shape} ({m['layout']})"),
                  caption=f"{timed} calls after {s['warmup']} warm-up · {versus}"
                          + (f" (export tolerance {tol:g})" if tol is not None and m["backend"] else ""))
    for name in ("format", "batch", "device", "median ms", "p90 ms", "clips/s", "max |diff|"):
        table.add_column(name, justify="left" if name in ("format", "device") else "right")
    for r in result["rows"]:
        diff = r["max_abs_diff"]
        shown = "-" if diff is None else "0" if diff == 0 else f"{diff:.2g}"
        if diff is not None and tol is not None and diff > tol:
            shown = f"[red]{shown}[/red]"
        table.add_row(r["format"], str(r["batch"]), r["device"], _ms(r["median_ms"]), _ms(r["p90_ms"]),
                      _rate(r["clips_per_s"]), shown)
    out.print(table)
