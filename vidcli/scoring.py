"""Scores of any model on a data split: decode views in threads, preprocess by the model card, forward in batches.

One loop for every family, backend and ONNX file, so `eval` of a run, `eval` of its exported ONNX file and the
PyTorch validation all see the same clips and the same input. Decoding runs in a small thread pool (OpenCV and
PyAV release the GIL) a few batches ahead of the model. Whatever ends the loop (an error, Ctrl-C), the pool is
drained before it returns: no decode is left running in a thread when the process exits.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from vidcli.console import progress
from vidcli.datasets.source import Source, view_problem
from vidcli.errors import VidcliError
from vidcli.modelcard import ModelCard


def threads_for(workers: int) -> int:
    return workers if workers > 0 else min(4, max(2, os.cpu_count() or 2))


def score(forward: Callable[[np.ndarray], np.ndarray], card: ModelCard, source: Source, batch_size: int,
          workers: int = 0, clips: int = 1, crops: int = 1, indices: Sequence[int] | None = None,
          show_progress: bool = True) -> np.ndarray:
    """Logits (N, classes) of the samples `indices` (default: all, in order), averaged over clips x crops views."""
    problem = view_problem(source.kind, source.sampling, clips, crops)
    if problem:
        raise VidcliError(problem)
    if batch_size < 1:
        raise VidcliError(f"batch size must be >= 1, got {batch_size}")
    order = list(range(len(source))) if indices is None else [int(i) for i in indices]
    steps = -(-len(order) // batch_size)
    out: list[np.ndarray] = []
    pool = ThreadPoolExecutor(threads_for(workers), thread_name_prefix="vidcli-decode")
    pending: collections.deque[Future] = collections.deque()
    todo = iter(order)

    def submit() -> None:
        i = next(todo, None)
        if i is not None:
            pending.append(pool.submit(source.load_views, i, clips, crops))

    bar = progress(steps, "predict") if show_progress else contextlib.nullcontext(lambda n=1: None)
    try:
        with bar as advance:
            for _ in range(2 * batch_size):
                submit()
            batch: list[np.ndarray] = []
            while pending:
                batch.append(pending.popleft().result())
                submit()
                if len(batch) == batch_size or not pending:
                    views = batch[0].shape[0]
                    logits = np.asarray(forward(card.preprocess(np.concatenate(batch))), dtype=np.float32)
                    out.append(logits.reshape(len(batch), views, -1).mean(axis=1))
                    batch = []
                    advance(1)
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    if not out:
        raise VidcliError("no samples to score")
    return np.concatenate(out).astype(np.float32)
