"""`vidcli data ...`: built-in data and the dataset fetchers. Fetchers register themselves here."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vidcli import console
from vidcli.cli import data_kinetics, data_medmnist, data_ucf101

app = typer.Typer(help="Get data: built-in synthetic sets and dataset fetchers.", no_args_is_help=True)
SYNTH_EXAMPLES = """Examples:

  vidcli data synth
  vidcli data synth --classes 4 --train 32 --frames 8 --size 32 --out data/tiny
  vidcli data synth --volumes --out data/synth_volumes --json
"""


@app.command("synth", epilog=SYNTH_EXAMPLES)
def synth(
    out: Path = typer.Option(None, "--out", help="Dataset root to write (default: data/synth; with --volumes: "
                             "data/synth_volumes).", show_default=False),
    classes: int = typer.Option(
        6, "--classes", min=2, max=8,
        help="Motion classes: the first N of left, right, up, down, grow, shrink, clockwise, counterclockwise "
             "(--volumes: shapes, at most 6).",
    ),
    train: int = typer.Option(64, "--train", min=1, help="Clips per class in train."),
    val: int = typer.Option(8, "--val", min=0, help="Clips per class in val."),
    test: int = typer.Option(16, "--test", min=0, help="Clips per class in test."),
    frames: int = typer.Option(None, "--frames", min=2, help="Frames per clip (default 16; not with --volumes, "
                               "which are size^3).", show_default=False),
    size: int = typer.Option(None, "--size", min=16, help="Frame height and width in pixels (default 64; "
                             "--volumes: the edge of the cube, default 28).", show_default=False),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same clips."),
    volumes: bool = typer.Option(False, "--volumes", help="Write 3D volumes (npz) instead of videos."),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset made with other settings."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No log lines on stderr, only errors."),
) -> None:
    """Write a synthetic dataset: moving shapes whose class is the motion (or 3D shapes with --volumes)."""
    with console.quiet(quiet):
        _synth(out, classes, train, val, test, frames, size, seed, volumes, force, as_json)


def _synth(out: Path | None, classes: int, train: int, val: int, test: int, frames: int | None, size: int | None,
           seed: int, volumes: bool, force: bool, as_json: bool) -> None:
    from vidcli.datasets import synth as synth_mod
    from vidcli.errors import VidcliError

    counts = {"train": train, "val": val, "test": test}
    if volumes:
        if frames is not None:
            raise VidcliError("--frames: volumes are cubes of --size voxels a side; there are no frames to set")
        if classes > len(synth_mod.VOLUME_SHAPES):
            raise VidcliError(f"--classes {classes}: --volumes has {len(synth_mod.VOLUME_SHAPES)} shapes "
                              f"({', '.join(synth_mod.VOLUME_SHAPES)})")
        path = synth_mod.write_synth_volumes(
            out or Path("data/synth_volumes"), classes=classes, counts=counts, size=size or 28, seed=seed,
            force=force,
        )
    else:
        path = synth_mod.write_synth_videos(
            out or Path("data/synth"), classes=classes, counts=counts, frames=frames or 16, size=size or 64,
            seed=seed, force=force,
        )
    summary = {"path": str(path), "counts": counts, "seed": seed}
    if as_json:
        typer.echo(json.dumps(summary))


# Fetchers live in their own modules; each adds its command here.
data_ucf101.register(app)
data_kinetics.register(app)
data_medmnist.register(app)
