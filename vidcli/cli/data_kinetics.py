"""`vidcli data kinetics-frames`: videos -> TSM frame folders and list files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vidcli import console
from vidcli.errors import PARTIAL

EXAMPLES = """Examples:

  vidcli data kinetics-frames videos/ --csv train.csv --workers 8
  vidcli data kinetics-frames videos/ --csv train.csv --shard 0/4
  vidcli data kinetics-frames --merge --out data/kinetics
  vidcli data kinetics-frames my_clips/ --out data/mine --height 256 --quiet
"""


def register(app: typer.Typer) -> None:
    """Add `kinetics-frames` to the `data` command group."""
    app.command("kinetics-frames", epilog=EXAMPLES)(kinetics_frames)


def kinetics_frames(
    src: Annotated[
        Path | None, typer.Argument(help="Folder of videos (any depth with --csv; else <class>/<clip>).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Dataset root for frame folders and list files.")] = Path(
        "data/kinetics"
    ),
    split: Annotated[
        str | None, typer.Option("--split", help="Split name; default: the CSV's split, or train/val/test subfolders.")
    ] = None,
    csv: Annotated[
        Path | None, typer.Option("--csv", help="Kinetics CSV (label,youtube_id,time_start,time_end,split).")
    ] = None,
    short_side: Annotated[
        int | None, typer.Option("--short-side", help="Short side in pixels after resizing.", show_default="256")
    ] = None,
    height: Annotated[
        int | None, typer.Option("--height", help="Resize to this height instead (the reference's scale=-1:H).")
    ] = None,
    quality: Annotated[
        int | None, typer.Option("--quality", min=1, max=100, help="JPEG quality.", show_default="90")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes.", show_default="CPU cores")
    ] = None,
    shard: Annotated[
        str | None, typer.Option("--shard", help="Process only slice i of N (i/N, 0-based) of the sorted videos.")
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="Only join finished shards' list files (done automatically by the last).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary to stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No log lines on stderr, only errors.")] = False,
) -> None:
    """Decode every video into img_00001.jpg... folders and write TSM list files, resumably and in parallel.

    Rerunning the same command skips finished videos and redoes half-written ones. Every video that
    fails is an error line (and a line in missing_<split>.txt) while the others go on; exit code 3
    when some failed, 1 when all did.
    """
    with console.quiet(quiet):
        _kinetics_frames(src, out, split, csv, short_side, height, quality, workers, shard, merge, as_json)


def _kinetics_frames(src: Path | None, out: Path, split: str | None, csv: Path | None, short_side: int | None,
                     height: int | None, quality: int | None, workers: int | None, shard: str | None, merge: bool,
                     as_json: bool) -> None:
    from vidcli.datasets import kinetics
    from vidcli.errors import VidcliError

    if merge:
        from vidcli.cli.common import refuse_given

        refuse_given({"SRC": src, "--csv": csv, "--short-side": short_side, "--height": height, "--quality": quality,
                      "--workers": workers, "--shard": shard},
                     "not used with --merge, which only joins the list files the shards in --out wrote")
        summary = _merge(out, split)
    else:
        if src is None:
            raise VidcliError("missing SRC: the folder of videos to extract")
        summary = kinetics.extract_kinetics_frames(
            src,
            out,
            split=split,
            csv=csv,
            short_side=short_side,
            height=height,
            quality=90 if quality is None else quality,
            workers=workers if workers is not None else kinetics.default_workers(),
            shard=kinetics.parse_shard(shard) if shard is not None else None,
        )
    if as_json:
        typer.echo(json.dumps(summary))
    elif not merge:
        console.log(
            f"{summary['done']} extracted, {summary['skipped']} already done, {summary['failed']} failed, "
            f"{summary['absent']} not on disk; lists in {summary['out']}"
        )
    if not merge and summary["failed"]:
        raise typer.Exit(PARTIAL)


def _merge(out: Path, split: str | None) -> dict:
    from vidcli.datasets.kinetics import merge_shards
    from vidcli.errors import VidcliError

    names = [split] if split else sorted({p.name.split("_list.shard")[0] for p in out.glob("*_list.shard*of*.txt")})
    if not names:
        raise VidcliError(f"{out}: no shard list files to merge")
    merged = {name: merge_shards(out, name) for name in names}
    for info in merged.values():
        console.log(f"{info['split']}: merged {info['shards']} shards, {info['videos']} videos -> {info['list']}")
    return {"out": str(out), "merged": merged}
