"""`vidcli data medmnist`: fetch a MedMNIST 3D set into the volumes format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from vidcli import console

# The keys of vidcli.datasets.medmnist.DATASETS (a test keeps them equal); spelled out so --help stays numpy-free.
Name = Literal["organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d", "synapsemnist3d"]

EXAMPLES = """Examples:

  vidcli data medmnist --name organmnist3d
  vidcli data medmnist --name nodulemnist3d --size 64 --out data/medmnist
  vidcli data medmnist --name organmnist3d --file organmnist3d.npz
  vidcli data medmnist --name vesselmnist3d --url http://mirror/v.npz -q
"""


def register(app: typer.Typer) -> None:
    """Add `medmnist` to the `data` command group."""
    app.command("medmnist", epilog=EXAMPLES)(medmnist)


def medmnist(
    name: Annotated[Name, typer.Option("--name", case_sensitive=False, help="Data set.")] = "organmnist3d",
    size: Annotated[Literal[28, 64], typer.Option("--size", help="Edge length of the volumes.")] = 28,
    out: Annotated[Path, typer.Option("--out", help="Folder for <name>_<size>.npz and its labels.")] = Path(
        "data/medmnist"
    ),
    file: Annotated[
        Path | None, typer.Option("--file", help="Import an npz you already have instead of downloading.")
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="Download from this mirror instead of Zenodo.")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the MD5 check (for modified files).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the written paths as one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No log lines on stderr, only errors.")] = False,
) -> None:
    """Download a MedMNIST 3D data set (or import a local copy), verify it and store it for training."""
    from vidcli.datasets.medmnist import fetch_medmnist, paths

    with console.quiet(quiet):
        npz = fetch_medmnist(name, size, out, file=file, url=url, verify=not no_verify)
    _, sidecar = paths(name, size, out)
    if as_json:
        typer.echo(json.dumps({"name": name, "size": size, "npz": str(npz), "labels": str(sidecar)}))
    else:
        console.out.print(f"wrote {npz} and {sidecar}", markup=False)
