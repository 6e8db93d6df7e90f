"""`vidcli predict`: top-k labels for clips, video URLs and live streams. With an ONNX model it imports no DL
framework."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from vidcli.cli.common import QUIET, Split, drop_stdout, refuse_given
from vidcli.errors import BAD_INPUT, INTERRUPTED, PARTIAL, VidcliError


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


def _sources(items: list[str], camera: int | None = None) -> list[Path | str]:
    """Paths, folders, globs and URLs (kept as text); `-` reads more of them from stdin, one per line."""
    from vidcli import inference

    expanded: list[str] = []
    for item in items:
        if item == "-":
            expanded.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            expanded.append(item)
    if camera is not None:
        if expanded:
            raise VidcliError("--camera is the only input of its command; drop the other inputs")
        return []
    if not expanded:
        raise VidcliError("no inputs: give video files, folders, globs or URLs, or - to read them from stdin")
    out: list[Path | str] = []
    for item in expanded:
        if "://" in item:
            from vidcli.video.live import is_url

            if is_url(item):
                out.append(item)
                continue
        out.extend(inference.expand_sources([item]))
    return out


class _Url:
    """An http(s) URL found to be a file (downloaded when its turn comes), or the error that opening it gave."""

    def __init__(self, url: str, error: str | None = None):
        self.url, self.error = url, error


def _classify(entries: list[Path | str], camera: int | None, live: bool, timeout: float):
    """(files and file URLs, the live source or None): a live stream or a camera must be the only input."""
    from vidcli.video import live as video_live

    if camera is not None:
        return [], video_live.CameraSource(camera)
    files: list[Path | _Url] = []
    found = None
    for entry in entries:
        if isinstance(entry, Path):
            files.append(entry)
            continue
        try:
            kind = video_live.classify_url(entry, live, timeout)
        except VidcliError as exc:
            files.append(_Url(entry, str(exc)))
            continue
        if not kind.live:
            files.append(_Url(entry))
        elif found is None and len(entries) == 1:
            found = kind.source(timeout)
        else:
            if kind.response is not None:
                kind.response.close()
            raise VidcliError(f"{entry} is a live stream ({kind.why}); a live stream must be the only input")
    return files, found


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        sources: list[str] = typer.Argument(None, help="Video files, folders, globs, URLs (video files over http(s); "
                                            "live: rtsp://, udp://, http(s) streams ...), or - to read them from stdin "
                                            "(also .npy volumes, or an .npz with --index).", show_default=False),
        model: Path = typer.Option(None, "--model", "-m", help="An .onnx file, a run folder (its model.onnx, else "
                                   "its best checkpoint), a checkpoint file, or a release name such as "
                                   "movinet_a0_base (default: the newest finished run).", show_default=False),
        top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many labels to show."),
        clips: int = typer.Option(1, "--clips", min=1, help="Average over N evenly spaced clips (long videos)."),
        runs_dir: Path = typer.Option(None, "--runs-dir", help="Where to look for the newest finished run when "
                                      "--model is not given (default: runs).", show_default=False),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line on stdout."),
        index: int = typer.Option(None, "--index", min=0, help="Volume N of an .npz data set (with --split).",
                                  show_default=False),
        split: Split = typer.Option(None, "--split", help="The .npz split --index reads (default: test).",
                                    show_default=False),
        stream: bool = typer.Option(False, "--stream", help="Feed a stream model (MoViNet stream, online TSM) one "
                                    "frame at a time (--json: one line per frame)."),
        batch: int = typer.Option(None, "--batch", min=1, help="Inputs per model call, decoded in parallel "
                                  "(default 8).", show_default=False),
        threads: int = typer.Option(None, "--threads", min=0, help="Threads per model call, ONNX Runtime's or the "
                                    "checkpoint's framework's (0: its default; default: 1 for a stream ONNX file, "
                                    "where one frame is too little work to share, else 0).",
                                    show_default=False),
        live: bool = typer.Option(False, "--live", help="Treat http(s) URLs as live streams (without it: live when "
                                  "the server sends no Content-Length, an HLS playlist or a multipart stream)."),
        camera: int = typer.Option(None, "--camera", min=0, help="Classify camera N live (0: the first).",
                                   show_default=False),
        window: int = typer.Option(None, "--window", min=1, help="Live, clip models: stream frames per prediction "
                                   "(default: the model's clip, its frames frame_step apart).", show_default=False),
        stride: int = typer.Option(None, "--stride", min=1, help="Live: stream frames between predictions (default: "
                                   "half the window; with --stream, every frame the model takes).", show_default=False),
        duration: float = typer.Option(None, "--duration", min=0.001, help="Live: stop after SECONDS of the stream "
                                       "(exit 0).", show_default=False),
        timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="Live: seconds without a frame that make a "
                                      "stall (also the wait for a URL to answer)."),
        reconnect: int = typer.Option(None, "--reconnect", min=0, help="Live: reconnect tries after a stall or a "
                                      "lost connection (counted again once frames flow; default 3).",
                                      show_default=False),
        quiet: bool = QUIET,
    ) -> None:
        """Classify clips: the top-k labels of each input, or of a live stream as it plays.

        \b
        Exit codes:
          0    all inputs classified (live: the stream ended, or --duration passed)
          3    some inputs failed (every result is still printed)
          2    bad input: no input could be read, or a bad option; live: the URL
               failed (HTTP 404 ...) or the stream never sent a frame
          1    the job failed; live: the stream was lost after it sent frames and
               no reconnect brought it back (the lines printed stay, then one
               error line)
          130  Ctrl-C (every line printed is complete)

        \b
        Live streams (rtsp, udp, rtmp, srt, http(s) MPEG-TS or HLS) and cameras are
        classified until they end: a clip model on the newest --window frames every
        --stride frames, a stream model (--stream) frame by frame. --json prints one
        line per prediction (source, frame, time: seconds from the stream's start,
        top_k). An http(s) URL whose server sends its length is a file: downloaded
        under a temporary name and classified like one (--live: a stream anyway).
        A model slower than the stream drops frames to stay live (counted on
        stderr). A stall (no frame for --timeout s) or a cut connection is
        reconnected up to --reconnect times (UDP has no end: silence is a stall).

        \b
        Examples:
          vidcli predict clip.mp4
          vidcli predict clips/ -m runs/quickstart/1/model.onnx --json
          find videos -name '*.mp4' | vidcli predict - --json > predictions.jsonl
          vidcli predict long_video.mp4 --clips 5 --top-k 3
          vidcli predict clip.mp4 --stream -m runs/movinet_a0_stream/1/model.onnx
          vidcli predict data/medmnist/organmnist3d_28.npz --index 5 --split test
          vidcli predict https://example.com/clip.mp4 --json
          vidcli predict rtsp://camera.local/stream -m model.onnx --stride 8 --json
          vidcli predict udp://127.0.0.1:1234 --stream -m stream.onnx --duration 60
          vidcli predict --camera 0 -m model.onnx
        """
        from vidcli import models

        if stream:  # one frame at a time from the start of each input: these have nothing to act on
            refuse_given({"--clips": clips != 1 or None, "--batch": batch, "--index": index},
                         "not used with --stream, which feeds every frame of each video to the stream model in turn")
        if runs_dir is not None and model is not None:
            raise VidcliError("--runs-dir is where the default model is looked for; --model names the model")
        if split is not None and index is None:
            raise VidcliError("--split picks the .npz split that --index reads; give --index too")
        runs_dir, split = runs_dir or Path("runs"), split or "test"
        entries = _sources(sources or [], camera)
        if model is not None and not model.exists() and "/" not in str(model):
            from vidcli.exporting import release_onnx

            model = release_onnx(str(model)) or model  # a release name, e.g. movinet_a0_base
        choice = models.resolve(model, runs_dir)
        name = str(choice.path)
        m = models.open_stream(choice, threads) if stream else models.open_model(choice, threads)
        models.announce(choice)
        files, source = _classify(entries, camera, live, timeout)
        if source is not None:
            _predict_live(m, source, stream, as_json, name, top_k=top_k, window=window, stride=stride,
                          duration=duration, timeout=timeout, reconnect=3 if reconnect is None else reconnect,
                          clips=clips, index=index, batch=batch)
            return
        refuse_given({"--window": window, "--stride": stride, "--duration": duration, "--reconnect": reconnect},
                     "for live sources (stream URLs, --camera); these inputs are files")
        failures = total = 0
        for result in _file_results(m, files, stream, as_json, name, top_k, clips, index, split, batch or 8,
                                    timeout):
            total += 1
            failures += "error" in result
            _emit(result, as_json)
        if failures:
            raise typer.Exit(BAD_INPUT if failures == total else PARTIAL)


def _file_results(m, files: list, stream: bool, as_json: bool, name: str, top_k: int, clips: int,
                  index: int | None, split: str, batch: int = 8, timeout: float = 60):
    """Results in input order; a file URL is downloaded into a temporary folder when its turn comes and
    reported under its URL."""
    import shutil
    import tempfile

    def run(paths: list[Path]):
        if stream:
            return _stream_results(m, paths, top_k, as_json, name)
        from vidcli import inference

        return inference.predict(m, paths, top_k, clips, index, split, name, batch=batch)

    with tempfile.TemporaryDirectory(prefix="vidcli-url-") as tmp:
        local: list[Path] = []  # consecutive local files go through the model together (--batch)
        for entry in [*files, None]:
            if isinstance(entry, Path):
                local.append(entry)
                continue
            if local:
                yield from run(local)
                local = []
            if entry is None:
                break
            error = entry.error
            if error is None:
                from vidcli import live as live_mod

                try:
                    path = live_mod.download(entry.url, Path(tmp), timeout)
                except VidcliError as exc:
                    error = str(exc)
            if error is not None:
                yield {"source": entry.url, "error": error, "model": name}
                continue
            for result in run([path]):
                yield {**result, "source": result["source"].replace(str(path), entry.url)}
            shutil.rmtree(path.parent, ignore_errors=True)


def _predict_live(m, source, stream: bool, as_json: bool, name: str, *, top_k: int, window: int | None,
                  stride: int | None, duration: float | None, timeout: float, reconnect: int, clips: int,
                  index: int | None, batch: int | None = None) -> None:
    """Classify a live source until it ends, --duration passes or Ctrl-C (exit 130)."""
    import time

    from vidcli import interrupts
    from vidcli import live as live_mod
    from vidcli.console import log, warn

    try:
        refuse_given({"--clips": clips != 1 or None, "--index": index, "--batch": batch},
                     "for files; a live source is classified over a sliding window (--window, --stride), one "
                     "prediction at a time")
        clf = live_mod.LiveClassifier(m, stream=stream, window=window, stride=stride, top=top_k, name=name,
                                      source=source.name)
        clf.warm_up()
    except BaseException:
        source.close()
        raise
    view = _LiveView(as_json)
    started = time.monotonic()
    with interrupts.deferred():
        reader = clf.reader(source, timeout=timeout, reconnect=reconnect, should_stop=interrupts.requested)
        warned = False
        gone = False
        try:
            with reader:
                for prediction in clf.predictions(reader, duration):
                    view.show(prediction)
                    if reader.dropped and not warned:
                        warned = True
                        warn(f"{source.name}: the model is slower than the stream; dropping frames to stay live")
        except BrokenPipeError:  # the reader of stdout left (`| head`): stop as it asked, quietly
            gone = True
            drop_stdout()
        finally:
            view.close()
            ended = " (stopped by Ctrl-C)" if interrupts.requested() and not gone else ""
            log(live_mod.summary(reader, clf.predictions_made, started) + ended)
        stopped = interrupts.requested()
    if stopped and not gone:
        raise typer.Exit(INTERRUPTED)


class _LiveView:
    """--json: one line per prediction; text: a status line refreshed in place on a terminal (the last top-k
    printed at the end), else one line per prediction. Every line is written whole and flushed."""

    def __init__(self, as_json: bool):
        self.as_json, self.last = as_json, None
        self.terminal = not as_json and sys.stdout.isatty() and sys.stderr.isatty()

    def show(self, p: Any) -> None:
        self.last = p
        if self.as_json:
            line = json.dumps(p.record())
        elif self.terminal:
            from vidcli import streaming

            best = p.top_k[0]
            streaming.live(f"{p.source}  {p.time:7.1f} s  frame {p.frame}  {best['probability']:6.1%}  {best['label']}")
            return
        else:
            line = f"{p.time:9.2f} s  frame {p.frame:>7}  " + "  ".join(
                f"{item['probability']:6.1%} {item['label']}" for item in p.top_k)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        if not self.terminal or self.last is None:
            return
        from vidcli import streaming

        streaming.live(None)
        p = self.last
        _emit({"source": f"{p.source}  (at {p.time:.1f} s, frame {p.frame})", "top_k": p.top_k}, False)


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
