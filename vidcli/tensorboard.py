"""TensorBoard event files written without a framework, the same for every backend.

Scalars are classic `simple_value` summaries (TensorBoard's reader lists them under Scalars), one step per
epoch numbered as in history.csv (1, 2, ...); the confusion matrix and PR curves of an evaluation are PNG
images. Only the `tensorboard` package's protobufs and record writer are used, which load no TensorFlow.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


class Writer:
    """One event file under `folder` (a new file per process, as TensorBoard expects)."""

    def __init__(self, folder: Path):
        from tensorboard.summary.writer.record_writer import RecordWriter

        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.vidcli"
        self._file = open(folder / name, "ab")  # noqa: SIM115  (closed by close())
        self._records = RecordWriter(self._file)
        self._write(file_version="brain.Event:2")

    def _write(self, **fields) -> None:
        from tensorboard.compat.proto import event_pb2

        self._records.write(event_pb2.Event(wall_time=time.time(), **fields).SerializeToString())
        self._records.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto import summary_pb2

        entries = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items() if v is not None]
        self._write(step=int(step), summary=summary_pb2.Summary(value=entries))

    def image(self, tag: str, png: Path, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        data = png.read_bytes()
        width, height = struct.unpack(">II", data[16:24])  # the PNG header's IHDR chunk
        img = summary_pb2.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=data)
        self._write(step=int(step), summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=img)]))

    def close(self) -> None:
        self._file.close()


def log_images(folder: Path, step: int, images: dict[str, Path]) -> None:
    """Add PNG images (tag -> file) to the event files under `folder`."""
    writer = Writer(folder)
    try:
        for tag, png in images.items():
            writer.image(tag, png, step)
    finally:
        writer.close()
