"""`vidcli train`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vidcli.cli.common import QUIET


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        recipe: Path = typer.Argument(None, help="Recipe YAML (see recipes/).", show_default=False),
        set_: list[str] = typer.Option([], "--set", help="Override a recipe key, e.g. --set train.epochs=3."),
        resume: Path = typer.Option(
            None, "--resume", help="Continue an interrupted run folder from its last checkpoint."
        ),
        runs_dir: Path = typer.Option(None, "--runs-dir", help="Where run folders are made (default: runs).",
                                      show_default=False),
        as_json: bool = typer.Option(False, "--json", help="Print the run's final state as JSON to stdout."),
        quiet: bool = QUIET,
    ) -> None:
        """Train a model from a recipe into a new run folder runs/<name>/<n>.

        Several GPUs or machines: train.distribute for Keras models (mirrored; multi_worker with TF_CONFIG), \
torchrun --nproc-per-node N -m vidcli train RECIPE for PyTorch models. Exit codes: 0 done; 1 failed (e.g. the \
loss became NaN); 2 bad recipe or data; 130 interrupted (resume with --resume).

        \b
        Examples:
          vidcli train recipes/quickstart.yaml
          vidcli train recipes/quickstart.yaml --set train.epochs=3 --set data.size=[64,64]
          vidcli train --resume runs/quickstart/1 --set train.epochs=20
          torchrun --nproc-per-node 2 -m vidcli train recipes/tsm_quickstart.yaml
        """
        from vidcli import training
        from vidcli.errors import VidcliError

        if resume is not None and runs_dir is not None:
            raise VidcliError("--runs-dir is where new runs are made; --resume continues the run folder it names")
        run = training.train(recipe, set_, resume, runs_dir or Path("runs"))
        if run is None:  # a distributed run's non-chief process: the chief wrote the run folder
            return
        state = run.state
        if as_json:
            typer.echo(json.dumps({"run": str(run.path), **state}))
        else:
            from vidcli.console import log

            log(f"done: {run.path}  best {state.get('monitor')} {state.get('best_score')} "
                f"at epoch {state.get('best_epoch')}")
