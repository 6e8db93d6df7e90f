"""Frames from sources that are not files on disk: live streams (rtsp, udp, http(s) MPEG-TS ...) and cameras.

One decoding thread per connection reads frames as they come and hands them over through a small buffer that
drops its oldest frame when full: a model slower than the stream then sees the newest frames (a live view stays
live) and the drops are counted. The consumer owns the clock: no frame for `timeout` seconds is a stall; a stall
or a lost connection is reconnected up to `reconnect` times in a row (the count starts again once frames flow).
A source that never sends a frame is bad input (exit 2); one lost after it sent frames is a failed job (exit 1).

HTTP(S) streams are read by `requests` and fed to OpenCV's FFmpeg backend as a byte stream (OpenCV >= 4.11), so a
status code is one clear error, a cut connection is told apart from a clean end (chunked encoding's last chunk),
and the GET that classified the URL is the stream itself (servers that take one client work). FFmpeg opens the
other protocols itself and does not tell a clean close from a cut: its end of stream is the stream's end; UDP has
no end (silence is a stall).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

import vidcli.video  # noqa: F401  (quiets FFmpeg before cv2 loads)

# isort: split
import cv2

from vidcli.errors import VidcliError, fail

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp"})
HTTP_SCHEMES = frozenset({"http", "https"})
PLAYLISTS = ("application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl")  # HLS: FFmpeg follows them
MULTIPART = "multipart/x-mixed-replace"  # MJPEG cameras: FFmpeg's mpjpeg demuxer
GRACE = 1.0  # seconds the consumer waits past `timeout`, so FFmpeg's own (more precise) timeouts report first
BURST = 0.5  # seconds of frames the buffer holds at least (a stream's first frames arrive in one burst)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: C:// is a drive


class Frame(NamedTuple):
    index: int  # frames decoded since the stream started, this one excluded (gaps: frames never handed over)
    time: float  # seconds since the stream's first frame, by the stream's clock where it has one
    arrived: float  # time.monotonic() when decoded
    image: np.ndarray  # uint8 (H, W, C), already through `prepare`
    connection: int  # 1 for the first connection, +1 for every reconnect


def url_scheme(text: str) -> str | None:
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def is_url(text: str) -> bool:
    """A URL this module reads; any other `scheme://` is refused by name rather than taken for a file."""
    scheme = url_scheme(text)
    if scheme is None:
        return False
    if scheme not in LIVE_SCHEMES | HTTP_SCHEMES:
        known = ", ".join(sorted(LIVE_SCHEMES | HTTP_SCHEMES))
        raise VidcliError(f"{text}: unsupported URL scheme {scheme!r} (known: {known})")
    return True


# -- sources: one way to open a connection each ------------------------------------------------------------


class _Feed(io.BufferedIOBase):
    """An HTTP body as the non-seekable byte stream OpenCV decodes from; how it ended is kept in `error`
    (None: a clean end), never raised into FFmpeg."""

    def __init__(self, response: Any):
        self.response, self.error, self.position = response, None, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self.response.raw.read1(size if size and size > 0 else 1 << 16)
        except Exception as exc:  # requests/urllib3 raise many types for a cut or a timeout
            self.error = exc
            return b""
        self.position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.position if (offset, whence) == (0, 1) else -1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.response.close()
        super().close()


class Capture(NamedTuple):
    cap: cv2.VideoCapture
    feed: _Feed | None = None


class Source:
    """How to (re)open one live source; `name` is how it is shown."""

    name: str
    has_end = True  # False: silence is the only end it knows (UDP)

    def open(self, timeout: float) -> Capture:
        raise NotImplementedError

    def end_reason(self, capture: Capture, waited: float, timeout: float) -> tuple[str, str]:
        """Why reading stopped: ("end" | "stall" | "lost", words)."""
        if waited >= 0.9 * timeout or not self.has_end:
            return "stall", f"no frame for {timeout:g} s"
        return "end", "end of stream"

    def close(self) -> None:
        pass


class FfmpegSource(Source):
    """A URL that FFmpeg opens itself (rtsp, udp, rtmp, srt, HLS ...), with its open and read timeouts."""

    def __init__(self, url: str):
        self.name = self.url = url
        self.has_end = url_scheme(url) not in ("udp", "rtp")

    def open(self, timeout: float) -> Capture:
        ms = int(timeout * 1000)
        cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG,
                               [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        if not cap.isOpened():
            cap.release()
            raise VidcliError(f"no video stream could be opened within {timeout:g} s (is it sending?)")
        return Capture(cap)


class HttpSource(Source):
    """An http(s) live stream read by `requests`; `first` is the open response that classified the URL."""

    def __init__(self, url: str, timeout: float, first: Any = None, remote: Any = None):
        from vidcli import httprange

        self.name = self.url = url
        self.remote = remote or httprange.Remote(url, timeout=(timeout, timeout), retries=0)  # `first`'s session
        self.first = first

    def open(self, timeout: float) -> Capture:
        from vidcli import httprange

        response, self.first = self.first, None
        if response is None:
            try:
                response = self.remote.request("GET")
            except httprange.Transient as exc:
                raise VidcliError(str(exc)) from exc
        feed = _Feed(response)
        cap = cv2.VideoCapture(feed, cv2.CAP_FFMPEG, [])
        if not cap.isOpened():
            cap.release()
            feed.close()
            why = _words(feed.error, timeout) if feed.error else "not a video stream OpenCV can decode"
            raise VidcliError(why)
        return Capture(cap, feed)

    def end_reason(self, capture: Capture, waited: float, timeout: float) -> tuple[str, str]:
        error = capture.feed.error if capture.feed is not None else None
        if error is None:
            return "end", "end of stream"
        words = _words(error, timeout)
        return ("stall" if "no answer" in words else "lost"), words

    def close(self) -> None:
        if self.first is not None:
            self.first.close()
        self.remote.close()


class CameraSource(Source):
    def __init__(self, index: int):
        self.index, self.name = index, f"camera:{index}"

    def open(self, timeout: float) -> Capture:
        cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            raise VidcliError("camera not found or busy")
        return Capture(cap)

    def end_reason(self, capture: Capture, waited: float, timeout: float) -> tuple[str, str]:
        return "lost", "the camera stopped sending frames"


def _words(exc: BaseException, timeout: float) -> str:
    import urllib3

    from vidcli import httprange

    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection lost (cut before the stream's end)"
    return httprange.reason(exc, timeout)


def http_stream_supported() -> bool:
    """OpenCV >= 4.11 decodes from a Python byte stream; older ones leave http to FFmpeg (a cut reads as the end)."""
    return hasattr(cv2, "IStreamReader")


# -- URLs: file or live ------------------------------------------------------------------------------------


@dataclass
class UrlKind:
    """What an http(s) URL turned out to be. `response` is the open GET (kept for a live stream)."""

    url: str
    live: bool
    response: Any = None
    why: str = ""
    remote: Any = None  # the session `response` came through (closed with it)

    def source(self, timeout: float) -> Source:
        if self.response is not None and http_stream_supported():
            return HttpSource(self.url, timeout, self.response, self.remote)
        if self.response is not None:
            self.response.close()
            self.remote.close()
        return FfmpegSource(self.url)


def classify_url(url: str, live: bool = False, timeout: float = 10.0) -> UrlKind:
    """rtsp, udp, rtmp, srt ...: live. http(s): one GET; live with `live`, for an HLS playlist or a multipart
    (MJPEG) stream, or a body of unknown length (no Content-Length: it keeps sending); a file otherwise."""
    scheme = url_scheme(url)
    if scheme in LIVE_SCHEMES:
        return UrlKind(url, True, why=f"{scheme}:// is live")
    from vidcli import httprange

    remote = httprange.Remote(url, timeout=(timeout, timeout), retries=0)
    try:
        response = remote.request("GET")
    except httprange.Transient as exc:
        remote.close()
        raise VidcliError(f"{url}: {exc}") from exc
    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    path = response.url.split("?")[0].lower()
    listed = kind in PLAYLISTS or path.endswith(".m3u8") or kind == MULTIPART  # FFmpeg reads these itself
    if not listed and (live or not response.headers.get("Content-Length", "").isdigit()):
        return UrlKind(url, True, response, "--live" if live else "no Content-Length", remote)
    response.close()
    remote.close()
    if listed:
        return UrlKind(url, True, why=f"Content-Type {kind or 'none'}")
    return UrlKind(url, False, why="Content-Length given")


# -- the reader --------------------------------------------------------------------------------------------


class _Clock:
    """Seconds since the stream's first frame: the decoder's timestamps while they advance, else the wall clock
    (cameras, streams without timestamps). A reconnect goes on from the last time plus the outage."""

    def __init__(self, last_time: float, last_arrival: float | None):
        self.resume = (last_time, last_arrival)
        self.base = self.first_pos = self.last_pos = self.last_t = 0.0
        self.first_now: float | None = None
        self.last_now = 0.0
        self.by_pos = True

    def __call__(self, pos_ms: float, now: float) -> float:
        if self.first_now is None:
            last_time, last_arrival = self.resume
            self.base = 0.0 if last_arrival is None else last_time + (now - last_arrival)
            self.first_pos, self.first_now = pos_ms, now
            self.by_pos = math.isfinite(pos_ms) and pos_ms >= 0
            t = self.base
        elif self.by_pos and math.isfinite(pos_ms) and pos_ms > self.last_pos:
            t = self.base + (pos_ms - self.first_pos) / 1000
        else:
            self.by_pos = False
            t = self.last_t + (now - self.last_now)
        self.last_pos, self.last_t, self.last_now = pos_ms, t, now
        return t


class LiveReader:
    """Frames of a live `source` in batches, decoded in a thread. `prepare` turns an RGB frame into what the
    model takes (resize); `keep(index)` says which frames are worth converting at all (the others are only
    grabbed). The buffer holds at least `capacity` frames (and half a second of the stream's)."""

    def __init__(self, source: Source, prepare: Callable[[np.ndarray], np.ndarray], *, capacity: int = 8,
                 timeout: float = 10.0, reconnect: int = 3, keep: Callable[[int], bool] | None = None,
                 should_stop: Callable[[], bool] = lambda: False, warn: Callable[[str], None] | None = None):
        if warn is None:
            from vidcli.console import warn
        self.source, self.prepare, self.keep = source, prepare, keep or (lambda i: True)
        self.capacity, self.timeout, self.reconnect = max(1, capacity), timeout, reconnect
        self.should_stop, self.warn = should_stop, warn
        self.frames = self.dropped = self.connections = 0  # frames handed over, dropped unseen, connections made
        self.started: float | None = None
        self._buffer: deque[Frame] = deque()
        self._limit = self.capacity
        self._cond = threading.Condition()
        self._state: tuple[str, str] | None = None
        self._next = self._connection_frames = 0
        self._last_time = 0.0
        self._last_arrival: float | None = None
        self._activity = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._capture: Capture | None = None

    # -- the consumer side ------------------------------------------------------------------------------

    def batches(self) -> Iterator[list[Frame]]:
        """Lists of new frames, oldest first; returns at the stream's end or when `should_stop()`. Raises
        VidcliError (exit 2) when the source never sent a frame, exit 1 when it was lost and not regained."""
        tries = 0
        self._connect()
        while not self.should_stop():
            batch, state = self._wait(0.1)
            if batch:
                if batch[-1].connection == self.connections:
                    tries = 0
                yield batch
                continue
            if state is None:
                if time.monotonic() - self._activity <= self.timeout + GRACE:
                    continue
                state = ("stall", f"no frame for {self.timeout:g} s")
            kind, why = state
            if kind == "end" and self._connection_frames:
                return
            if self.frames == 0:
                raise VidcliError(f"{self.source.name}: {why}" if kind != "end" else
                                  f"{self.source.name}: the stream ended before its first frame")
            if tries >= self.reconnect:
                after = f"; {tries} reconnect{'s' if tries != 1 else ''} failed" if tries else " (--reconnect 0)"
                raise fail(f"{self.source.name}: stream lost after {self.frames} frames: {why}{after}")
            tries += 1
            self.warn(f"{self.source.name}: {why}; reconnecting ({tries} of {self.reconnect})")
            deadline = time.monotonic() + min(0.5 * tries, self.timeout)
            while time.monotonic() < deadline and not self.should_stop():
                time.sleep(0.05)
            self._connect()

    @property
    def decoded(self) -> int:
        """Frames the stream sent so far (the ones `keep` passed over included)."""
        return self._next

    def close(self) -> None:
        self._halt(wait=0.5)
        self.source.close()

    def __enter__(self) -> LiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, seconds: float) -> tuple[list[Frame], tuple[str, str] | None]:
        with self._cond:
            if not self._buffer and self._state is None:
                self._cond.wait(seconds)
            batch = list(self._buffer)
            self._buffer.clear()
            return batch, (self._state if not batch else None)

    def _connect(self) -> None:
        self._halt()
        with self._cond:
            self.connections += 1
            self._state, self._connection_frames = None, 0
            self._activity = time.monotonic()
            clock = _Clock(self._last_time, self._last_arrival)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self.connections, self._stop, clock), daemon=True,
                                        name=f"vidcli-live-{self.connections}")
        self._thread.start()

    def _halt(self, wait: float | None = None) -> None:
        """Stop the current connection, waiting for it to let go of its socket (a UDP port is bound) at most
        `wait` seconds (default: the read timeout); a thread still stuck is left behind, its frames ignored."""
        self._stop.set()
        capture = self._capture
        if capture is not None and capture.feed is not None:
            capture.feed.close()  # unblocks a read waiting on the socket
        if self._thread is not None:
            self._thread.join(self.timeout + GRACE if wait is None else wait)
            self._thread = None

    # -- the decoding thread ----------------------------------------------------------------------------

    def _run(self, number: int, stop: threading.Event, clock: _Clock) -> None:
        from vidcli.video.decode import to_rgb

        try:
            capture = self.source.open(self.timeout)
        except VidcliError as exc:
            self._finish(number, ("failed", str(exc)))
            return
        except Exception as exc:  # an OpenCV or network error we have no words for
            self._finish(number, ("failed", f"cannot open ({type(exc).__name__}: {exc})"))
            return
        self._capture = capture
        fps = capture.cap.get(cv2.CAP_PROP_FPS)
        with self._cond:
            self._limit = max(self.capacity, math.ceil(BURST * fps) if 1 <= fps <= 240 else self.capacity)
        waited = 0.0
        try:
            while not stop.is_set():
                began = time.monotonic()
                if not capture.cap.grab():
                    waited = time.monotonic() - began
                    break
                index = self._claim(number)
                if index is None:
                    break
                if not self.keep(index):
                    continue
                ok, image = capture.cap.retrieve()
                if not ok or image is None:
                    continue
                now = time.monotonic()
                t = clock(capture.cap.get(cv2.CAP_PROP_POS_MSEC), now)
                self._put(number, Frame(index, t, now, self.prepare(to_rgb(image)), number))
        except Exception as exc:  # a decoder error mid-stream is a lost connection, not a crash
            self._finish(number, ("lost", f"decoding failed ({type(exc).__name__}: {exc})"))
            return
        finally:
            capture.cap.release()
            if capture.feed is not None:
                capture.feed.close()
            if self._capture is capture:
                self._capture = None
        self._finish(number, ("stopped", "") if stop.is_set() else self.source.end_reason(capture, waited,
                                                                                             self.timeout))

    def _claim(self, number: int) -> int | None:
        with self._cond:
            if number != self.connections:
                return None
            self._next += 1
            self._activity = time.monotonic()
            return self._next - 1

    def _put(self, number: int, frame: Frame) -> None:
        with self._cond:
            if number != self.connections:
                return
            if self.started is None:
                self.started = frame.arrived
            while len(self._buffer) >= self._limit:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(frame)
            self.frames += 1
            self._connection_frames += 1
            self._last_time, self._last_arrival = frame.time, frame.arrived
            self._cond.notify_all()

    def _finish(self, number: int, state: tuple[str, str]) -> None:
        with self._cond:
            if number == self.connections and self._state is None:
                self._state = state
                self._cond.notify_all()
