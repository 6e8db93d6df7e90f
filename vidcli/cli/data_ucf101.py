"""`vidcli data fetch-ucf101`: a UCF101 subset read out of the remote zip with HTTP range requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer

from vidcli import console

DEFAULT_URL = "https://storage.googleapis.com/thumos14_files/UCF101_videos.zip"

_HELP = (
    "Fetch a UCF101 subset into OUT/{train,val,test}/<Class>/ without downloading the 6.5 GB zip.\n\n"
    "Only the zip's directory and the chosen clips are read (HTTP Range requests, --workers at a time). "
    "A rerun keeps clips whose size and CRC-32 match the zip and fetches the rest, so an interrupted fetch "
    "resumes. OUT/manifest.json records the source, every clip's CRC-32, size and split.\n\n"
    "How the counts are met, class by class (each class has its own RNG, seeded by --seed and its name):\n\n"
    "--split-by group (default): the class's groups (gGG: same actor and scene) are shuffled, then dealt to "
    "train, val and test in that order. Each split takes whole groups until it has its count; the last group "
    "it takes is cut to the count (its lowest-numbered clips are kept, the rest go unused). So every split "
    "gets exactly its count and no group spans two splits. A class that runs out of groups is an error.\n\n"
    "--split-by clip: the class's clips are shuffled and cut into train, val and test in that order, as the "
    "TensorFlow tutorial does (clips of one group then land in several splits).\n\n"
    f"The zip: --url, else $VIDCLI_UCF101_URL, else {DEFAULT_URL}"
)
EXAMPLES = """Examples:

  vidcli data fetch-ucf101
  vidcli data fetch-ucf101 --classes 5 --split train=20,val=5,test=5 --workers 8
  vidcli data fetch-ucf101 --class-names Archery,YoYo --split-by clip --seed 1
  vidcli data fetch-ucf101 --url http://mirror/UCF101_videos.zip --quiet --json
"""


def fetch_ucf101_command(
    classes: int | None = typer.Option(
        None, "--classes", min=1, show_default="10", help="Take the first N classes in sorted order."
    ),
    class_names: list[str] | None = typer.Option(
        None, "--class-names", help="Classes by name, comma-separated or repeated (instead of --classes)."
    ),
    split: str = typer.Option("train=30,val=10,test=10", "--split", help="Clips per class in each split."),
    split_by: Literal["group", "clip"] = typer.Option(
        "group", "--split-by", help="group: no group spans two splits; clip: the tutorial's split."
    ),
    out: Path = typer.Option(Path("data/ucf101"), "--out", help="Dataset root to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the split; the same seed picks the same clips."),
    url: str | None = typer.Option(
        None, "--url", envvar="VIDCLI_UCF101_URL", show_default=False, help="Where the zip is (see above)."
    ),
    workers: int = typer.Option(4, "--workers", min=1, max=64, help="Clips fetched in parallel."),
    force: bool = typer.Option(
        False, "--force", help="Remove files under OUT outside the chosen classes instead of stopping."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No log lines on stderr, only errors."),
) -> None:
    from vidcli.datasets import ucf101
    from vidcli.errors import VidcliError

    names = [n.strip() for item in class_names or [] for n in item.split(",") if n.strip()] or None
    if names and classes is not None:
        raise VidcliError("give --classes or --class-names, not both")
    with console.quiet(quiet):
        summary = ucf101.fetch_ucf101(
            out,
            url=ucf101.resolve_url(url),
            classes=10 if classes is None and not names else classes,
            class_names=names,
            split=ucf101.parse_split(split),
            split_by=split_by,
            seed=seed,
            workers=workers,
            force=force,
        )
        if as_json:
            typer.echo(json.dumps(summary))
            return
        clips = ", ".join(f"{n} {s}" for s, n in summary["clips"].items())
        console.log(
            f"UCF101: {len(summary['classes'])} class(es), {clips} clips in {summary['root']} "
            f"({summary['fetched']} fetched, {summary['kept']} already there, {summary['moved']} moved)"
        )


def register(app: typer.Typer) -> None:
    app.command("fetch-ucf101", help=_HELP, epilog=EXAMPLES)(fetch_ucf101_command)
