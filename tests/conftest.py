"""Shared fixtures: the real test videos, a tiny synthetic dataset, and one tiny trained (and exported) run.

Training is the slow part of the suite, so the trained run is made once per session and copied by
tests that change it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Small real videos live in the repository; the large conformance fixtures beside it (see tests/data/README.md).
DATA = REPO / "tests" / "data"
VIDEOS = DATA / "videos"
TESTDATA = Path(os.environ.get("VIDCLI_TESTDATA") or REPO.parent / "shared" / "testdata")
TINY_COUNTS = {"train": 6, "val": 2, "test": 2}


@pytest.fixture(scope="module")
def torch_one_thread():
    """On a shared, busy CPU two OpenMP threads spin against each other: one is many times faster.
    Torch test modules use it with `pytestmark = pytest.mark.usefixtures("torch_one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fixture_path(*parts: str) -> Path:
    """A conformance fixture under $VIDCLI_TESTDATA/fixtures. Absent: the test skips with a reason naming
    where it looked, or fails when VIDCLI_REQUIRE_FIXTURES=1 (as `.ci/run` sets), so CI never skips."""
    path = TESTDATA.joinpath("fixtures", *parts)
    if not path.exists():
        msg = f"conformance fixture not found: {path} (set VIDCLI_TESTDATA to the folder holding fixtures/)"
        if os.environ.get("VIDCLI_REQUIRE_FIXTURES") == "1":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The repository's own test data: `testdata / "videos" / "box.mp4"`."""
    assert VIDEOS.is_dir(), f"test videos missing: {VIDEOS}"
    return DATA


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 motion classes, 6/2/2 clips each, 8 frames of 32x32."""
    from vidcli.datasets.synth import write_synth_videos

    root = tmp_path_factory.mktemp("tiny") / "data"
    return write_synth_videos(root, classes=3, counts=TINY_COUNTS, frames=8, size=32, workers=2)


def tiny_recipe_dict(data_root: Path, epochs: int = 2, **train) -> dict:
    """A recipe that trains in seconds: a 2-stage r2plus1d on 4 frames of 32x32."""
    return {
        "name": "tiny",
        "data": {"root": str(data_root), "frames": 4, "frame_step": 2, "size": [32, 32]},
        "model": {"arch": "r2plus1d", "params": {"filters": [4, 8]}},
        "train": {"epochs": epochs, "batch_size": 6, "learning_rate": 0.003, "seed": 0, **train},
    }


def plain_onnx_model(path: Path, labels: list[str], input_name: str = "video") -> Path:
    """An instant framework-free clip model with vidcli metadata, for error paths: the mean over time and space
    of 4 RGB frames of 32x32, so its 3 logits are the colour channels' means (3 labels)."""
    import json

    import onnx

    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [input_name], ["logits"], axes=[1, 2, 3], keepdims=0)], "g",
        [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, [None, 4, 32, 32, 3])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [None, 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    meta = {"labels": json.dumps(labels), "frames": "4", "frame_step": "2", "size": "[32, 32]",
            "channels": "3", "normalization": json.dumps({"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]})}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)
    return path


def write_recipe(path: Path, raw: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_recipe(tiny_data, tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipes") / "tiny.yaml", tiny_recipe_dict(tiny_data))


@pytest.fixture(scope="session")
def tiny_run(tiny_recipe, tmp_path_factory) -> Path:
    """`vidcli train` of the tiny recipe (2 epochs), through the CLI. Treat as read-only: copy to change."""
    from typer.testing import CliRunner

    from vidcli.cli.main import app

    runs_dir = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["train", str(tiny_recipe), "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    run = runs_dir / "tiny" / "1"
    assert (run / "run.json").is_file()
    return run


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported to ONNX (outside the run folder, so the run itself stays untouched)."""
    from vidcli.exporting import export
    from vidcli.runs import Run

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export(Run.open(tiny_run), out)
    assert out.is_file()
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run, at runs/tiny/1 under tmp_path."""
    dst = tmp_path / "runs" / "tiny" / "1"
    shutil.copytree(tiny_run, dst)
    return dst


def env() -> dict[str, str]:
    """The environment for a `python -m vidcli` subprocess: this checkout first on the path."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out.pop("VIDCLI_DEBUG", None)
    return out


def vidcli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vidcli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(), timeout=timeout)


def one_error_line(stderr: str, only: bool = True) -> str:
    """The one `error:` line, with no traceback; with `only`, also the only line (no logs before it)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert not only or len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]
